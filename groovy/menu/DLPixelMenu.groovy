/*
 * Extensions > DL Pixel Classifier for QuPath: Train..., Apply..., Manage models..., Copy training script.
 *
 * Set this file as QuPath's startup script (Edit > Preferences > General > Startup script, QuPath 0.5+) after
 * `dlpixel qupath install`, which copies it beside DLPixel.groovy and dlpixel.json and writes its folder below.
 * Every action goes through DLPixel.groovy, so the menu does exactly what a script would.
 *
 * JavaFX and QuPath classes are looked up by name at run time, so the file compiles without them.
 */
import groovy.json.JsonOutput
import groovy.json.JsonSlurper

String dlpixelHome = '@DLPIXEL_HOME@'

ClassLoader loader = getClass().classLoader
Closure fx = { String name -> Class.forName(name, true, loader) }

File helperFile
if (!dlpixelHome.startsWith('@')) {
    helperFile = new File(dlpixelHome, 'DLPixel.groovy')
} else if (System.getProperty('dlpixel.helper')) {
    helperFile = new File(System.getProperty('dlpixel.helper'))
} else {
    String userPath = fx('qupath.lib.gui.prefs.PathPrefs').userPathProperty().get()
    helperFile = new File(new File(userPath ?: System.getProperty('user.home'), 'dlpixel'), 'DLPixel.groovy')
}
if (!helperFile.isFile())
    throw new FileNotFoundException("DLPixel.groovy not found at ${helperFile}: run `dlpixel qupath install`")
System.setProperty('dlpixel.helper', helperFile.absolutePath)
def DLPixel = new GroovyClassLoader(loader).parseClass(helperFile)
Map installed = DLPixel.installSettings()

def Platform = fx('javafx.application.Platform')
def ButtonType = fx('javafx.scene.control.ButtonType')
def ButtonData = fx('javafx.scene.control.ButtonBar$ButtonData')

// ---------------------------------------------------------------------------------------------------------------
// Small UI helpers

Closure onFx = { Closure work ->
    if (Platform.isFxApplicationThread())
        work.call()
    else
        Platform.runLater(work as Runnable)
}

Closure alert = { String kind, String title, String message ->
    onFx {
        def a = fx('javafx.scene.control.Alert').newInstance(fx('javafx.scene.control.Alert$AlertType').valueOf(kind))
        a.title = title
        a.headerText = null
        def text = fx('javafx.scene.control.TextArea').newInstance(message)
        text.editable = false
        text.wrapText = true
        a.dialogPane.content = text
        a.show()
    }
}

Closure copyToClipboard = { String text ->
    onFx {
        def content = fx('javafx.scene.input.ClipboardContent').newInstance()
        content.putString(text)
        fx('javafx.scene.input.Clipboard').getSystemClipboard().setContent(content)
    }
}

Closure label = { String text -> fx('javafx.scene.control.Label').newInstance(text) }

/** A closure as a JavaFX event handler (the interface is only known at run time). */
Closure handler = { Closure body -> body.asType(fx('javafx.event.EventHandler')) }

Closure parseRelaxed = { String text ->
    String t = text.trim()
    if (t.isEmpty() || t == 'null')
        return null
    try {
        return new JsonSlurper().parseText(t)
    } catch (Exception ignored) {
        return t.contains(',') ? t.split(',').collect { it.trim() }.findAll { it } : t
    }
}

/** A form with one row per setting, built from the settings map itself; returns [node, read]. */
Closure settingsForm
settingsForm = { Map values, Map choices, String prefix ->
    def grid = fx('javafx.scene.layout.GridPane').newInstance()
    grid.hgap = 8
    grid.vgap = 4
    List readers = []
    int row = 0
    values.each { String key, Object value ->
        String path = prefix + key
        if (value instanceof Map) {
            def inner = settingsForm(value as Map, choices, path + '.')
            def pane = fx('javafx.scene.control.TitledPane').newInstance(key, inner.node)
            pane.expanded = false
            grid.add(pane, 0, row++, 2, 1)
            readers << { Map out -> out[key] = inner.read() }
            return
        }
        grid.add(label(key), 0, row)
        def control
        Closure read
        if (value instanceof Boolean) {
            control = fx('javafx.scene.control.CheckBox').newInstance()
            control.selected = value
            read = { control.selected }
        } else if (choices[path]) {
            control = fx('javafx.scene.control.ComboBox').newInstance()
            control.items.addAll(choices[path])
            control.editable = true
            control.value = value instanceof String ? value : JsonOutput.toJson(value)
            read = { String t = control.editor.text; (choices[path].contains(t)) ? t : parseRelaxed(t) }
        } else {
            String shown = value == null ? '' : (value instanceof String || value instanceof Number) ?
                    value.toString() : JsonOutput.toJson(value)
            control = fx('javafx.scene.control.TextField').newInstance(shown)
            control.prefColumnCount = 24
            if (value instanceof Integer || value instanceof Long)
                read = { try { new BigInteger(control.text.trim()) } catch (NumberFormatException e) {
                    throw new IllegalArgumentException("${path} must be a whole number") } }
            else if (value instanceof Number)
                read = { try { new BigDecimal(control.text.trim()) } catch (NumberFormatException e) {
                    throw new IllegalArgumentException("${path} must be a number") } }
            else if (value instanceof String)
                read = { control.text }
            else
                read = { parseRelaxed(control.text) }
        }
        grid.add(control, 1, row++)
        readers << { Map out -> out[key] = read.call() }
    }
    return [node: grid, read: { Map out = [:]; readers.each { it.call(out) }; out }]
}

Closure scrolling = { node ->
    def scroll = fx('javafx.scene.control.ScrollPane').newInstance(node)
    scroll.fitToWidth = true
    scroll.prefViewportHeight = 420
    return scroll
}

Closure modelNames = { ->
    def result = DLPixel.listModels()
    List models = result instanceof Map ? (result.models ?: []) : (result ?: [])
    return models.collect { it instanceof Map ? it.name as String : it as String }
}

Closure imageList = { Map live, List selectedNames ->
    def list = fx('javafx.scene.control.ListView').newInstance()
    list.selectionModel.selectionMode = fx('javafx.scene.control.SelectionMode').MULTIPLE
    list.prefHeight = 120
    List names = live.project == null ? [] : live.project.getImageList().collect { it.getImageName() as String }
    list.items.addAll(names)
    selectedNames.each { if (it in names) list.selectionModel.select(it) }
    return list
}

Closure runInBackground = { String title, Closure work ->
    def status = label('Starting...')
    def stage = fx('javafx.stage.Stage').newInstance()
    stage.title = title
    def box = fx('javafx.scene.layout.VBox').newInstance(8.0d)
    box.style = '-fx-padding: 12;'
    box.children.add(status)
    stage.scene = fx('javafx.scene.Scene').newInstance(box, 420.0d, 80.0d)
    stage.show()
    Closure progress = { Map event -> onFx { status.text = (event.message ?: event.event) as String } }
    Thread.start {
        try {
            def result = work.call(progress)
            onFx { stage.close() }
            alert('INFORMATION', title, 'Done.\n' + JsonOutput.prettyPrint(JsonOutput.toJson(result)))
        } catch (Throwable t) {
            onFx { stage.close() }
            alert('ERROR', title, t.message ?: t.toString())
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Dialogs

/** Train... and Copy training script: the training settings, from the defaults or from a saved classifier. */
Closure trainingDialog = { boolean copyOnly ->
    Map live = DLPixel.liveContext()
    if (live.project == null) {
        alert('WARNING', 'DL Pixel Classifier', 'Open a project first.')
        return
    }
    Map defaults = (installed.defaults ?: [:]).train ?: [:]
    Map choices = (installed.choices ?: [:]).train ?: [:]
    def dialog = fx('javafx.scene.control.Dialog').newInstance()
    dialog.title = copyOnly ? 'Copy training script' : 'Train DL pixel classifier'
    def root = fx('javafx.scene.layout.VBox').newInstance(6.0d)
    def name = fx('javafx.scene.control.TextField').newInstance('')
    name.promptText = 'letters, digits, _ and -'
    def overwrite = fx('javafx.scene.control.CheckBox').newInstance('Replace a classifier of the same name')
    def fromModel = fx('javafx.scene.control.ComboBox').newInstance()
    try { fromModel.items.addAll(modelNames()) } catch (Exception e) { DLPixel.log(e.message) }
    def loadButton = fx('javafx.scene.control.Button').newInstance('Load settings from model')
    def images = imageList(live, [])
    Map form = settingsForm(defaults, choices, '')
    def holder = fx('javafx.scene.layout.StackPane').newInstance(scrolling(form.node))
    loadButton.onAction = handler { e ->
        String source = fromModel.value
        if (!source)
            return
        try {
            def loaded = DLPixel.loadSettings(source)
            Map settings = loaded instanceof Map && loaded.settings instanceof Map ? loaded.settings : loaded
            form = settingsForm(defaults + (settings as Map), choices, '')
            holder.children.setAll(scrolling(form.node))
            name.text = loaded instanceof Map && loaded.name ? loaded.name :
                    'Retrain_' + source + '_' + new java.text.SimpleDateFormat('yyyyMMdd').format(new Date())
        } catch (Exception err) {
            alert('ERROR', 'Load settings', err.message)
        }
    }
    def fromRow = fx('javafx.scene.layout.HBox').newInstance(6.0d)
    fromRow.children.addAll(fromModel, loadButton)
    root.children.addAll(label('Classifier name'), name, overwrite, fromRow,
            label('Images (none selected: every image with classified annotations)'), images,
            label('Settings'), holder)
    dialog.dialogPane.content = root
    def copyButton = ButtonType.newInstance('Copy as Script', ButtonData.OTHER)
    def trainButton = ButtonType.newInstance('Train', ButtonData.OK_DONE)
    dialog.dialogPane.buttonTypes.addAll(copyOnly ? [copyButton, ButtonType.CANCEL] :
            [trainButton, copyButton, ButtonType.CANCEL])
    def chosen = dialog.showAndWait().orElse(null)
    if (chosen == null || chosen == ButtonType.CANCEL)
        return
    Map request
    try {
        request = [project: live.project, name: name.text.trim(),
                   images: new ArrayList(images.selectionModel.selectedItems), settings: form.read(),
                   overwrite: overwrite.selected]
    } catch (IllegalArgumentException err) {
        alert('ERROR', 'Settings', err.message)
        return
    }
    if (chosen == copyButton) {
        try {
            copyToClipboard(DLPixel.script(request + [kind: 'train']))
            DLPixel.log('dlpixel: training script copied to the clipboard')
        } catch (Exception err) {
            alert('ERROR', 'Copy training script', err.message)
        }
        return
    }
    runInBackground("Training ${request.name}".toString()) { Closure progress ->
        DLPixel.request(request + [action: 'train'], live, progress)
    }
}

/** Apply...: a classifier, the output and scope, and the images (the open one by default). */
Closure applyDialog = { String preselected ->
    Map live = DLPixel.liveContext()
    if (live.project == null) {
        alert('WARNING', 'DL Pixel Classifier', 'Open a project first.')
        return
    }
    Map defaults = (installed.defaults ?: [:]).apply ?: [:]
    Map choices = (installed.choices ?: [:]).apply ?: [:]
    def dialog = fx('javafx.scene.control.Dialog').newInstance()
    dialog.title = 'Apply DL pixel classifier'
    def classifier = fx('javafx.scene.control.ComboBox').newInstance()
    try { classifier.items.addAll(modelNames()) } catch (Exception e) { alert('ERROR', 'Models', e.message); return }
    classifier.value = preselected ?: (classifier.items.isEmpty() ? null : classifier.items.get(0))
    Object entry = live.imageData == null ? null : live.project.getEntry(live.imageData)
    def images = imageList(live, entry == null ? [] : [entry.getImageName() as String])
    Map form = settingsForm(defaults, choices, '')
    def root = fx('javafx.scene.layout.VBox').newInstance(6.0d)
    root.children.addAll(label('Classifier'), classifier, label('Images'), images, label('Settings'),
            scrolling(form.node))
    dialog.dialogPane.content = root
    def copyButton = ButtonType.newInstance('Copy as Script', ButtonData.OTHER)
    def applyButton = ButtonType.newInstance('Apply', ButtonData.OK_DONE)
    dialog.dialogPane.buttonTypes.addAll(applyButton, copyButton, ButtonType.CANCEL)
    def chosen = dialog.showAndWait().orElse(null)
    if (chosen == null || chosen == ButtonType.CANCEL || !classifier.value)
        return
    Map request
    try {
        request = [project: live.project, classifier: classifier.value as String,
                   images: new ArrayList(images.selectionModel.selectedItems), settings: form.read()]
    } catch (IllegalArgumentException err) {
        alert('ERROR', 'Settings', err.message)
        return
    }
    if (chosen == copyButton) {
        try {
            copyToClipboard(DLPixel.script(request + [kind: 'apply']))
        } catch (Exception err) {
            alert('ERROR', 'Copy apply script', err.message)
        }
        return
    }
    runInBackground("Applying ${request.classifier}".toString()) { Closure progress ->
        DLPixel.request(request + [action: 'apply'], live, progress)
    }
}

/** Manage models...: the project's classifiers, newest first, with their details. */
Closure manageDialog = { ->
    Map live = DLPixel.liveContext()
    if (live.project == null) {
        alert('WARNING', 'DL Pixel Classifier', 'Open a project first.')
        return
    }
    def result
    try {
        result = DLPixel.listModels()
    } catch (Exception e) {
        alert('ERROR', 'Models', e.message)
        return
    }
    List models = result instanceof Map ? (result.models ?: []) : (result ?: [])
    def list = fx('javafx.scene.control.ListView').newInstance()
    list.items.addAll(models.collect { it instanceof Map ? it.name as String : it as String })
    def details = fx('javafx.scene.control.TextArea').newInstance('')
    details.editable = false
    details.prefRowCount = 16
    Closure showDetails = { obs, before, now ->
        int i = now as int
        details.text = i < 0 ? '' : JsonOutput.prettyPrint(JsonOutput.toJson(models[i]))
    }
    list.selectionModel.selectedIndexProperty().addListener(showDetails.asType(fx('javafx.beans.value.ChangeListener')))
    def dialog = fx('javafx.scene.control.Dialog').newInstance()
    dialog.title = 'DL pixel classifiers'
    def root = fx('javafx.scene.layout.VBox').newInstance(6.0d)
    root.children.addAll(list, details)
    dialog.dialogPane.content = root
    def applyButton = ButtonType.newInstance('Apply...', ButtonData.OTHER)
    dialog.dialogPane.buttonTypes.addAll(applyButton, ButtonType.CLOSE)
    if (dialog.showAndWait().orElse(null) == applyButton && list.selectionModel.selectedItem)
        applyDialog(list.selectionModel.selectedItem as String)
}

Closure pythonDialog = { ->
    String current = ''
    try { current = DLPixel.python() } catch (Exception ignored) { }
    def dialog = fx('javafx.scene.control.TextInputDialog').newInstance(current)
    dialog.title = 'Python executable for dlpixel'
    dialog.headerText = 'The python of the environment where dlpixel is installed'
    String chosen = dialog.showAndWait().orElse(null)
    if (chosen)
        DLPixel.setPython(chosen.trim())
}

// ---------------------------------------------------------------------------------------------------------------
// The menu

Closure item = { String text, Closure action ->
    def menuItem = fx('javafx.scene.control.MenuItem').newInstance(text)
    menuItem.onAction = handler { e ->
        try {
            action.call()
        } catch (Throwable t) {
            alert('ERROR', text, t.message ?: t.toString())
        }
    }
    return menuItem
}

onFx {
    def qupath = fx('qupath.lib.gui.QuPathGUI').getInstance()
    def menu = qupath.getMenu('Extensions>DL Pixel Classifier', true)
    menu.items.setAll([
            item('Train...') { trainingDialog(false) },
            item('Apply...') { applyDialog(null) },
            item('Manage models...') { manageDialog() },
            item('Copy training script') { trainingDialog(true) },
            fx('javafx.scene.control.SeparatorMenuItem').newInstance(),
            item('Python executable...') { pythonDialog() },
    ])
    DLPixel.log("dlpixel: menu added (helper ${helperFile})".toString())
}
