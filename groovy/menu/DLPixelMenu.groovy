/*
 * Extensions > DL Pixel Classifier for QuPath: Train..., Apply..., Manage models..., Copy training script.
 *
 * Set this file as QuPath's startup script (Edit > Preferences > General > Startup script, QuPath 0.5+) after
 * `dlpixel qupath install`, which copies it beside DLPixel.groovy and dlpixel.json and writes its folder below.
 * Every action goes through DLPixel.groovy, so the menu does exactly what a script would; what the menu decides
 * without a screen (requests, sections, progress, Cancel) is in DLPixelMenuLogic.groovy beside it. Every request and
 * every read of image data runs off the JavaFX thread.
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
File logicFile = [new File(helperFile.parentFile, 'DLPixelMenuLogic.groovy'),
                  new File(helperFile.parentFile, 'menu/DLPixelMenuLogic.groovy')].find { it.isFile() }
if (logicFile == null)
    throw new FileNotFoundException("DLPixelMenuLogic.groovy not found beside ${helperFile}: run `dlpixel qupath install`")
def Logic = new GroovyClassLoader(loader).parseClass(logicFile)
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



/** Run work off the JavaFX thread; then done(result) on it, or an error alert titled title. */
Closure background = { String title, Closure work, Closure done ->
    Thread.start("dlpixel: ${title}".toString()) {
        try {
            def result = work.call()
            onFx { done.call(result) }
        } catch (Throwable t) {
            alert('ERROR', title, t.message ?: t.toString())
        }
    }
}

Closure models = { ->
    def result = DLPixel.listModels()
    return (result instanceof Map ? (result.models ?: []) : (result ?: [])) as List<Map>
}

Closure multiList = { double height ->
    def list = fx('javafx.scene.control.ListView').newInstance()
    list.selectionModel.selectionMode = fx('javafx.scene.control.SelectionMode').MULTIPLE
    list.prefHeight = height
    return list
}

Closure button = { String text, Closure action ->
    def b = fx('javafx.scene.control.Button').newInstance(text)
    b.onAction = handler { e -> action.call() }
    return b
}

Closure row = { List nodes ->
    def box = fx('javafx.scene.layout.HBox').newInstance(6.0d)
    box.children.addAll(nodes)
    return box
}

/** Titled, collapsible sections of settings; returns [node, read]. */
Closure sectionsPane = { Map values, Map choices, List layout ->
    def box = fx('javafx.scene.layout.VBox').newInstance(4.0d)
    List forms = []
    Logic.sections(values, layout).each { Map section ->
        Map form = settingsForm(section.values as Map, choices, '')
        def pane = fx('javafx.scene.control.TitledPane').newInstance(section.title as String, form.node)
        pane.expanded = section.expanded
        box.children.add(pane)
        forms << form
    }
    return [node: box, read: { Map out = new LinkedHashMap(); forms.each { out.putAll(it.read.call()) }; out }]
}

/** The progress window of a train or apply request: status, bar, early stopping, loss chart, log and Cancel. */
Closure runWithProgress = { String title, Map request, Map live ->
    def progress = Logic.progress(title)
    def cancel = DLPixel.newCancel()
    def status = label('Starting...')
    status.wrapText = true
    def bar = fx('javafx.scene.control.ProgressBar').newInstance(-1.0d)
    bar.maxWidth = Double.MAX_VALUE
    def early = label('')
    def xAxis = fx('javafx.scene.chart.NumberAxis').newInstance()
    xAxis.label = 'epoch'
    def yAxis = fx('javafx.scene.chart.NumberAxis').newInstance()
    def chart = fx('javafx.scene.chart.LineChart').newInstance(xAxis, yAxis)
    chart.animated = false
    chart.prefHeight = 260
    Map series = [:]
    [train_loss: 'train loss', val_loss: 'validation loss', mean_iou: 'mean IoU'].each { key, name ->
        def s = fx('javafx.scene.chart.XYChart$Series').newInstance()
        s.name = name
        chart.data.add(s)
        series[key] = s
    }
    def logArea = fx('javafx.scene.control.TextArea').newInstance('')
    logArea.editable = false
    logArea.prefRowCount = 5
    def cancelButton = fx('javafx.scene.control.Button').newInstance('Cancel')
    def stage = fx('javafx.stage.Stage').newInstance()
    stage.title = title
    def box = fx('javafx.scene.layout.VBox').newInstance(8.0d)
    box.style = '-fx-padding: 12;'
    box.children.addAll(status, bar, early)
    if (request.action == 'train')
        box.children.add(chart)
    box.children.addAll(logArea, cancelButton)
    stage.scene = fx('javafx.scene.Scene').newInstance(box, 560.0d, request.action == 'train' ? 560.0d : 280.0d)
    int shownPoints = 0
    int shownLog = 0
    Closure refresh = { ->
        status.text = progress.status
        bar.progress = progress.fraction
        early.text = progress.earlyStop
        while (shownPoints < progress.points.size()) {
            Map point = progress.points[shownPoints++]
            series.each { String key, s ->
                if (point[key] != null)
                    s.data.add(fx('javafx.scene.chart.XYChart$Data').newInstance(point.epoch, point[key]))
            }
        }
        while (shownLog < progress.log.size())
            logArea.appendText(progress.log[shownLog++] + '\n')
    }
    boolean[] finished = [false] as boolean[]
    cancelButton.onAction = handler { e ->
        if (finished[0]) {
            stage.close()
            return
        }
        Map next = Logic.cancelPressed(cancel, progress)
        cancelButton.text = next.button
        cancelButton.disable = next.disable
        status.text = next.status
    }
    stage.onCloseRequest = handler { e -> if (!finished[0]) { e.consume(); cancelButton.fire() } }
    stage.show()
    Thread.start("dlpixel: ${title}".toString()) {
        String outcome
        try {
            def result = DLPixel.request(request, live, { Map event -> onFx { progress.update(event); refresh() } },
                    cancel)
            outcome = 'Done: ' + JsonOutput.toJson(result)
            onFx { progress.update([event: 'done', message: progress.finished ? progress.status : 'Done']) }
        } catch (Throwable t) {
            outcome = t.message ?: t.toString()
            onFx { progress.status = outcome }
        }
        onFx {
            finished[0] = true
            refresh()
            logArea.appendText(outcome + '\n')
            bar.progress = 1.0d
            cancelButton.text = 'Close'
            cancelButton.disable = false
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Dialogs

/** Train... and Copy training script. */
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
    dialog.resizable = true
    def name = fx('javafx.scene.control.TextField').newInstance('')
    name.promptText = 'letters, digits, _ and -'
    def overwrite = fx('javafx.scene.control.CheckBox').newInstance('Replace a classifier of the same name')
    def fromModel = fx('javafx.scene.control.ComboBox').newInstance()
    fromModel.promptText = 'loading classifiers...'
    def images = multiList(110.0d)
    def imagesLabel = label('Images with classified annotations (loading...)')
    List<Map> classRows = []
    List<Map> channelRows = []
    def classBox = fx('javafx.scene.layout.VBox').newInstance(2.0d)
    def channelBox = fx('javafx.scene.layout.VBox').newInstance(2.0d)
    Map form = sectionsPane(defaults, choices, Logic.TRAIN_SECTIONS)
    def formHolder = fx('javafx.scene.layout.StackPane').newInstance(form.node)

    Closure showClasses
    showClasses = { List<Map> classes ->
        classRows.clear()
        classBox.children.clear()
        classes.each { Map c ->
            String text = c.name + (c.missing ? ' (not in these images)' : (c.count != null ? " (${c.count})" : ''))
            def tick = fx('javafx.scene.control.CheckBox').newInstance(text)
            tick.selected = c.selected == null ? true : c.selected
            def weight = fx('javafx.scene.control.TextField').newInstance((c.weight ?: '1') as String)
            weight.prefColumnCount = 5
            classRows << [name: c.name, tick: tick, weight: weight, count: c.count, color: c.color]
            classBox.children.add(row([tick, label('weight'), weight]))
        }
    }
    Closure showChannels
    showChannels = { List<Map> channels ->
        channelRows.clear()
        channelRows.addAll(channels.collect { Map c ->
            def tick = fx('javafx.scene.control.CheckBox').newInstance(c.name as String)
            tick.selected = c.selected == null ? true : c.selected
            [name: c.name, tick: tick]
        })
        channelBox.children.clear()
        channelRows.eachWithIndex { Map c, int i ->
            def up = button('\u2191') {
                if (i > 0) {
                    Collections.swap(channelRows, i, i - 1)
                    showChannels(channelRows.collect { [name: it.name, selected: it.tick.selected] })
                }
            }
            def down = button('\u2193') {
                if (i < channelRows.size() - 1) {
                    Collections.swap(channelRows, i, i + 1)
                    showChannels(channelRows.collect { [name: it.name, selected: it.tick.selected] })
                }
            }
            channelBox.children.add(row([c.tick, up, down]))
        }
    }
    Closure currentClasses = { -> classRows.collect { [name: it.name, selected: it.tick.selected,
                                                        weight: it.weight.text, count: it.count, color: it.color] } }
    Closure currentChannels = { -> channelRows.collect { [name: it.name, selected: it.tick.selected] } }
    Closure chosenImages = { -> new ArrayList(images.selectionModel.selectedItems ?: images.items) }

    def loadClasses = button('Load classes from selected images') {
        List names = chosenImages()
        background('Load classes', {
            [classes: Logic.classesIn(live.project, names, live), channels: Logic.channelsOf(live.project, names)]
        }) { Map found ->
            showClasses(found.classes as List<Map>)
            showChannels((found.channels as List).collect { [name: it, selected: true] })
        }
    }
    def loadSettings = button('Load settings from model') {
        String source = fromModel.value
        if (!source)
            return
        background('Load settings', { DLPixel.loadSettings(source) }) { loaded ->
            Map state = Logic.stateFromModel(loaded as Map, currentClasses(), currentChannels())
            form = sectionsPane(defaults + (state.settings as Map), choices, Logic.TRAIN_SECTIONS)
            formHolder.children.setAll(form.node)
            showClasses(state.classes as List<Map>)
            showChannels(state.channels as List<Map>)
            if (state.name)
                name.text = state.name
        }
    }
    background('Images', { Logic.annotatedImages(live.project, live) }) { List names ->
        images.items.setAll(names)
        imagesLabel.text = 'Images with classified annotations (none selected: all of them)'
    }
    background('Classifiers', { models().collect { it.name as String } }) { List names ->
        fromModel.items.setAll(names)
        fromModel.promptText = names ? 'a saved classifier' : 'no classifiers yet'
    }

    def content = fx('javafx.scene.layout.VBox').newInstance(6.0d)
    content.children.addAll(label('Classifier name'), name, overwrite, row([fromModel, loadSettings]),
            imagesLabel, images, loadClasses,
            fx('javafx.scene.control.TitledPane').newInstance('Classes and weights', classBox),
            fx('javafx.scene.control.TitledPane').newInstance('Channels (order as listed)', channelBox),
            formHolder)
    dialog.dialogPane.content = scrolling(content)
    def copyButton = ButtonType.newInstance('Copy as Script', ButtonData.OTHER)
    def trainButton = ButtonType.newInstance('Train', ButtonData.OK_DONE)
    dialog.dialogPane.buttonTypes.addAll(copyOnly ? [copyButton, ButtonType.CANCEL] :
            [trainButton, copyButton, ButtonType.CANCEL])
    def chosen = dialog.showAndWait().orElse(null)
    if (chosen == null || chosen == ButtonType.CANCEL)
        return
    Map request
    try {
        request = Logic.trainRequest([project: live.project, name: name.text, overwrite: overwrite.selected,
                                      images: new ArrayList(images.selectionModel.selectedItems),
                                      settings: form.read.call(), classes: currentClasses(),
                                      channels: currentChannels()])
    } catch (IllegalArgumentException err) {
        alert('ERROR', 'Settings', err.message)
        return
    }
    if (chosen == copyButton) {
        background('Copy training script', { DLPixel.script(request + [kind: 'train']) }) { String text ->
            copyToClipboard(text)
            DLPixel.log('dlpixel: training script copied to the clipboard')
        }
        return
    }
    runWithProgress("Training ${request.name}".toString(), request, live)
}

/** Apply...: a classifier, the output and scope, the images (the open one by default), the settings. */
Closure applyDialog
applyDialog = { String preselected ->
    Map live = DLPixel.liveContext()
    if (live.project == null) {
        alert('WARNING', 'DL Pixel Classifier', 'Open a project first.')
        return
    }
    Map defaults = (installed.defaults ?: [:]).apply ?: [:]
    Map choices = (installed.choices ?: [:]).apply ?: [:]
    def dialog = fx('javafx.scene.control.Dialog').newInstance()
    dialog.title = 'Apply DL pixel classifier'
    dialog.resizable = true
    def classifier = fx('javafx.scene.control.ComboBox').newInstance()
    classifier.promptText = 'loading classifiers...'
    background('Classifiers', { models().collect { it.name as String } }) { List names ->
        classifier.items.setAll(names)
        classifier.value = preselected ?: (names ? names[0] : null)
        classifier.promptText = names ? 'a saved classifier' : 'no classifiers yet: train one first'
    }
    def output = fx('javafx.scene.control.ChoiceBox').newInstance()
    output.items.addAll(Logic.OUTPUTS)
    output.value = defaults.output ?: 'measurements'
    def scope = fx('javafx.scene.control.ChoiceBox').newInstance()
    scope.items.addAll(Logic.SCOPES)
    scope.value = defaults.scope ?: 'annotations'
    Object entry = live.imageData == null ? null : live.project.getEntry(live.imageData)
    def images = multiList(120.0d)
    images.items.addAll(live.project.getImageList().collect { it.getImageName() as String })
    if (entry != null)
        images.selectionModel.select(entry.getImageName() as String)
    Map form = sectionsPane(defaults, choices, Logic.APPLY_SECTIONS)
    def content = fx('javafx.scene.layout.VBox').newInstance(6.0d)
    content.children.addAll(label('Classifier'), classifier,
            row([label('Output'), output, label('Scope'), scope]),
            label('Images (none selected: the image open in the viewer)'), images, form.node)
    dialog.dialogPane.content = scrolling(content)
    def copyButton = ButtonType.newInstance('Copy as Script', ButtonData.OTHER)
    def applyButton = ButtonType.newInstance('Apply', ButtonData.OK_DONE)
    dialog.dialogPane.buttonTypes.addAll(applyButton, copyButton, ButtonType.CANCEL)
    def chosen = dialog.showAndWait().orElse(null)
    if (chosen == null || chosen == ButtonType.CANCEL)
        return
    Map request
    try {
        request = Logic.applyRequest([project: live.project, classifier: classifier.value, output: output.value,
                                      scope: scope.value, images: new ArrayList(images.selectionModel.selectedItems),
                                      settings: form.read.call()])
    } catch (IllegalArgumentException err) {
        alert('ERROR', 'Settings', err.message)
        return
    }
    if (chosen == copyButton) {
        background('Copy apply script', { DLPixel.script(request + [kind: 'apply']) }) { String text ->
            copyToClipboard(text)
        }
        return
    }
    runWithProgress("Applying ${request.classifier}".toString(), request, live)
}

/** Manage models...: list, details, report, delete, export, apply. */
Closure manageDialog = { ->
    Map live = DLPixel.liveContext()
    if (live.project == null) {
        alert('WARNING', 'DL Pixel Classifier', 'Open a project first.')
        return
    }
    List<Map> shown = []
    def list = fx('javafx.scene.control.ListView').newInstance()
    list.prefHeight = 180
    def details = fx('javafx.scene.control.TextArea').newInstance('loading...')
    details.editable = false
    details.prefRowCount = 14
    Closure reload = { ->
        background('Models', { models() }) { List<Map> found ->
            shown.clear()
            shown.addAll(found)
            list.items.setAll(found.collect { Logic.describeModel(it) })
            details.text = found ? '' : 'No classifiers in this project yet.'
        }
    }
    Closure selected = { -> int i = list.selectionModel.selectedIndex; i < 0 ? null : shown[i].name as String }
    Closure showDetails = { obs, before, now ->
        int i = now as int
        details.text = i < 0 || i >= shown.size() ? '' : Logic.pretty(shown[i])
    }
    list.selectionModel.selectedIndexProperty().addListener(showDetails.asType(fx('javafx.beans.value.ChangeListener')))
    def report = button('Show report') {
        String name = selected()
        if (name)
            background('Report', { DLPixel.showModel(name) }) { Map info ->
                if (info.report)
                    fx('qupath.lib.gui.QuPathGUI').openInBrowser(new File(info.report as String).toURI().toString())
                else
                    alert('INFORMATION', 'Report', "${name} has no report.".toString())
            }
    }
    def delete = button('Delete...') {
        String name = selected()
        if (!name)
            return
        def confirm = fx('javafx.scene.control.Alert').newInstance(fx('javafx.scene.control.Alert$AlertType').CONFIRMATION)
        confirm.headerText = null
        confirm.contentText = "Delete classifier ${name} and its files?".toString()
        if (confirm.showAndWait().orElse(null) == ButtonType.OK)
            background('Delete', { DLPixel.deleteModel(name) }) { r -> reload() }
    }
    def export = button('Export...') {
        String name = selected()
        if (!name)
            return
        def chooser = fx('javafx.stage.FileChooser').newInstance()
        chooser.title = "Export ${name}".toString()
        chooser.initialFileName = name + '.zip'
        File target = chooser.showSaveDialog(list.scene?.window)
        if (target != null)
            background('Export', { DLPixel.exportModel(name, target.absolutePath) }) { r ->
                alert('INFORMATION', 'Export', "Exported to ${r.exported}".toString())
            }
    }
    def dialog = fx('javafx.scene.control.Dialog').newInstance()
    dialog.title = 'DL pixel classifiers'
    dialog.resizable = true
    def root = fx('javafx.scene.layout.VBox').newInstance(6.0d)
    root.children.addAll(list, row([report, delete, export]), details)
    dialog.dialogPane.content = root
    def applyButton = ButtonType.newInstance('Apply...', ButtonData.OTHER)
    dialog.dialogPane.buttonTypes.addAll(applyButton, ButtonType.CLOSE)
    reload()
    if (dialog.showAndWait().orElse(null) == applyButton && selected())
        applyDialog(selected())
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
    // A resource key, not English text: QuPath resolves 'Menu.Extensions' to its menu in the user's language.
    def menu = qupath.getMenu(Logic.MENU_PATH, true)
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
