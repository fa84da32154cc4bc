import groovy.json.JsonOutput
import groovy.json.JsonSlurper

import java.util.concurrent.atomic.AtomicInteger

/**
 * What the DL Pixel Classifier menu decides without JavaFX: the menu's place, the dialogs' sections, the requests
 * built from what the user chose, what a progress event shows, what Cancel does, and what QuPath's project holds
 * (annotated images, their classes and channels). DLPixelMenu.groovy draws it; tests run it without a screen.
 *
 * QuPath's classes are reached through the objects passed in (a Project, ImageData), never imported, so the file
 * compiles under a plain Groovy too.
 */
class DLPixelMenuLogic {

    /**
     * Where the menu goes. 'Menu.Extensions' is the key of QuPath's Extensions menu: QuPathGUI.getMenu resolves a key
     * to the menu's localised text (QuPath 0.5, 0.6, 0.7; its menus carry no ids), so the path holds in any language.
     */
    static final String MENU_PATH = 'Menu.Extensions>DL Pixel Classifier'

    /** The training dialog's sections, in order; the first is open. Keys not listed go to 'Other settings'. */
    static final List<Map> TRAIN_SECTIONS = [
            [title: 'Basic', keys: ['description', 'backbone', 'epochs', 'batch_size', 'learning_rate', 'tile_size',
                                    'downsample', 'validation_split']],
            [title: 'Training strategy', keys: ['scheduler', 'loss', 'early_stop_metric', 'early_stop_patience',
                                                'weight_decay', 'mixed_precision', 'context_scale', 'tile_overlap',
                                                'line_stroke_width', 'architecture']],
            [title: 'Transfer learning', keys: ['pretrained', 'freeze']],
            [title: 'Augmentation', keys: ['augment']],
            [title: 'Normalization', keys: ['normalization']],
            [title: 'Hardware and reproducibility', keys: ['device', 'num_workers', 'seed']],
    ]

    /** The apply dialog's sections (output and scope have controls of their own). */
    static final List<Map> APPLY_SECTIONS = [
            [title: 'Objects (output objects)', keys: ['object_type', 'min_object_area', 'min_hole_area', 'simplify']],
            [title: 'Tiling (empty: the classifier\'s own)', keys: ['tile_size', 'overlap']],
            [title: 'Hardware', keys: ['batch_size', 'device', 'backend', 'reader_threads']],
    ]

    /** Settings chosen with controls of their own, never in a section. */
    static final List<String> PICKED = ['channels', 'classes', 'class_weights', 'output', 'scope']

    static final List<String> OUTPUTS = ['measurements', 'objects', 'map', 'probabilities']
    static final List<String> SCOPES = ['annotations', 'selected', 'image']

    static final int RUNNING = 0
    static final int STOP = 1
    static final int ABORT = 2

    // -----------------------------------------------------------------------------------------------------------
    // Sections

    /** [[title, values (a map of the settings shown there, in order), expanded]]; empty sections are left out. */
    static List<Map> sections(Map values, List<Map> layout) {
        Set<String> placed = new HashSet<String>()
        List<Map> out = []
        layout.eachWithIndex { Map section, int i ->
            Map shown = new LinkedHashMap()
            section.keys.each { String key ->
                if (values.containsKey(key) && !(key in PICKED)) {
                    shown[key] = values[key]
                    placed << key
                }
            }
            if (shown)
                out << [title: section.title, values: shown, expanded: i == 0]
        }
        Map other = new LinkedHashMap()
        values.each { k, v -> if (!(k in placed) && !(k in PICKED)) other[k] = v }
        if (other)
            out << [title: 'Other settings', values: other, expanded: false]
        return out
    }

    // -----------------------------------------------------------------------------------------------------------
    // Requests

    /**
     * The train request from the dialog: state has project, name, overwrite, images (names), settings (from the
     * sections), classes ([name, selected, weight]) and channels ([name, selected], in the order chosen).
     * Throws IllegalArgumentException with a message for the user when the choice cannot train.
     */
    static Map trainRequest(Map state) {
        String name = (state.name ?: '').toString().trim()
        if (!(name ==~ /[A-Za-z0-9_-]+/))
            throw new IllegalArgumentException('Classifier name: letters, digits, _ and - only')
        Map settings = new LinkedHashMap(state.settings ?: [:])
        List<Map> classes = (state.classes ?: []) as List<Map>
        List<String> chosen = classes.findAll { it.selected }.collect { it.name as String }
        if (classes && chosen.size() < 2)
            throw new IllegalArgumentException('Choose at least two classes to train on')
        if (chosen)
            settings.classes = chosen
        Map weights = new LinkedHashMap()
        classes.findAll { it.selected }.each { Map c ->
            BigDecimal w = weight(c.weight, c.name as String)
            if (w != 1)
                weights[c.name as String] = w
        }
        settings.class_weights = weights
        List<Map> channels = (state.channels ?: []) as List<Map>
        List<String> picked = channels.findAll { it.selected }.collect { it.name as String }
        if (channels && picked.isEmpty())
            throw new IllegalArgumentException('Choose at least one channel')
        boolean everyChannelInOrder = picked == channels.collect { it.name as String }
        if (channels && !everyChannelInOrder)
            settings.channels = picked
        else if (channels)
            settings.remove('channels')
        Map request = new LinkedHashMap()
        request.action = 'train'
        request.project = state.project
        request.name = name
        request.images = new ArrayList(state.images ?: [])
        request.settings = settings
        request.overwrite = state.overwrite as boolean
        return request
    }

    /** A class weight typed by the user: a positive number (empty means 1). */
    static BigDecimal weight(Object text, String className) {
        String t = text == null ? '' : text.toString().trim()
        if (t.isEmpty())
            return BigDecimal.ONE
        try {
            BigDecimal w = new BigDecimal(t)
            if (w > 0)
                return w
        } catch (NumberFormatException ignored) {
        }
        throw new IllegalArgumentException("Weight of class '${className}' must be a positive number, not '${t}'".toString())
    }

    /** The apply request: state has project, classifier, images, output, scope, settings. */
    static Map applyRequest(Map state) {
        if (!state.classifier)
            throw new IllegalArgumentException('Choose a classifier')
        String output = state.output ?: 'measurements'
        String scope = state.scope ?: 'annotations'
        if (!(output in OUTPUTS))
            throw new IllegalArgumentException("Output must be one of ${OUTPUTS.join(', ')}".toString())
        if (!(scope in SCOPES))
            throw new IllegalArgumentException("Scope must be one of ${SCOPES.join(', ')}".toString())
        Map settings = new LinkedHashMap()
        (state.settings ?: [:]).each { k, v -> if (v != null && v != '') settings[k] = v }
        settings.output = output
        settings.scope = scope
        Map request = new LinkedHashMap()
        request.action = 'apply'
        request.project = state.project
        request.classifier = state.classifier as String
        request.images = new ArrayList(state.images ?: [])
        request.settings = settings
        return request
    }

    /**
     * "Load settings from model": the dialog's state from a saved classifier's settings. Classes the model names are
     * ticked with its weights (and added when the images lack them, marked missing); the others are unticked.
     * The model's channels come first, ticked, in its order.
     */
    static Map stateFromModel(Map loaded, List<Map> classes, List<Map> channels) {
        Map settings = new LinkedHashMap((loaded.settings ?: loaded) as Map)
        List<String> modelClasses = (settings.classes ?: []) as List<String>
        Map modelWeights = (settings.class_weights ?: [:]) as Map
        List<Map> outClasses = []
        (classes ?: []).each { Map c ->
            boolean inModel = modelClasses.isEmpty() || c.name in modelClasses
            outClasses << [name: c.name, selected: inModel,
                           weight: (modelWeights[c.name] ?: 1).toString(), count: c.count, color: c.color]
        }
        modelClasses.findAll { String n -> !(n in (classes ?: []).collect { it.name }) }.each { String n ->
            outClasses << [name: n, selected: true, weight: (modelWeights[n] ?: 1).toString(), count: 0, missing: true]
        }
        List<String> modelChannels = (settings.channels ?: []).collect { it.toString() }
        List<Map> outChannels = []
        if (modelChannels) {
            modelChannels.each { String n -> outChannels << [name: n, selected: true] }
            (channels ?: []).each { Map c -> if (!(c.name in modelChannels)) outChannels << [name: c.name, selected: false] }
        } else {
            (channels ?: []).each { Map c -> outChannels << [name: c.name, selected: true] }
        }
        PICKED.each { settings.remove(it) }
        return [settings: settings, classes: outClasses, channels: outChannels, name: loaded.name]
    }

    // -----------------------------------------------------------------------------------------------------------
    // Progress

    /** One event line of `dlpixel request --events jsonl` (or the bridge) as a map; null for any other line. */
    static Map parseEvent(String line) {
        String text = line?.trim()
        if (!text || !text.startsWith('{'))
            return null
        try {
            Object parsed = new JsonSlurper().parseText(text)
            return parsed instanceof Map && parsed.containsKey('event') ? parsed as Map : null
        } catch (Exception ignored) {
            return null
        }
    }

    /** What the progress window shows, updated event by event. */
    static class Progress {
        String title = ''
        String status = 'Starting...'
        /** 0..1, or -1 while the length of the step is unknown. */
        double fraction = -1
        Integer epoch
        Integer epochs
        /** One point per epoch: [epoch, train_loss, val_loss, mean_iou]. */
        List<Map> points = []
        String earlyStop = ''
        List<String> log = []
        boolean finished = false
        boolean stopping = false

        Progress update(Object eventOrLine) {
            Map e = eventOrLine instanceof Map ? eventOrLine as Map : parseEvent(eventOrLine as String)
            if (e == null)
                return this
            switch (e.event) {
                case 'stage':
                    status = (e.message ?: e.stage) as String
                    fraction = -1
                    break
                case 'extract':
                    fraction = ratio(e.done, e.total)
                    status = "Extracting training tiles: ${e.done}/${e.total}".toString()
                    break
                case 'batch':
                    epoch = e.epoch as Integer
                    if (epochs && e.batches)
                        fraction = ((e.epoch as double) - 1 + (e.batch as double) / (e.batches as double)) / epochs
                    status = "Epoch ${e.epoch}${epochs ? '/' + epochs : ''}: batch ${e.batch}/${e.batches}, loss ${num(e.loss)}".toString()
                    break
                case 'epoch':
                    epoch = e.epoch as Integer
                    epochs = e.epochs as Integer
                    fraction = ratio(epoch, epochs)
                    points << [epoch: epoch, train_loss: e.train_loss, val_loss: e.val_loss, mean_iou: e.mean_iou]
                    status = "Epoch ${epoch}/${epochs}: train loss ${num(e.train_loss)}, validation loss ${num(e.val_loss)}, mean IoU ${num(e.mean_iou)}".toString()
                    earlyStop = earlyStopText(e)
                    break
                case 'tiles':
                    fraction = ratio(e.done, e.total)
                    String speed = e.tiles_per_second ? ", ${num(e.tiles_per_second)} tiles/s" : ''
                    status = "${e.image}: ${e.done}/${e.total} tiles${speed}".toString()
                    break
                case 'log':
                    String line = ((e.level && e.level != 'info') ? "${e.level}: " : '') + e.message
                    log << line
                    if (e.level == 'warning' || e.level == 'error')
                        status = line
                    break
                case 'done':
                    fraction = 1
                    finished = true
                    status = (e.message ?: (e.name ? "Saved ${e.name}: mean IoU ${num(e.mean_iou)} at epoch ${e.best_epoch}" : 'Done')) as String
                    break
                case 'result':
                    finished = true
                    fraction = 1
                    status = e.ok ? 'Done' : ('Failed: ' + e.error)
                    break
                default:
                    status = e.message ? e.message as String :
                            e.event + ' ' + e.findAll { k, v -> k != 'event' }.collect { k, v -> "${k}=${v}" }.join(' ')
            }
            if (stopping && !finished)
                status = 'Stopping after this epoch... ' + status
            return this
        }

        static String earlyStopText(Map e) {
            String metric = (e.metric_name ?: 'mean_iou') as String
            String best = e.best_epoch != null ? " (best: epoch ${e.best_epoch}, ${metric} ${num(e.best_metric)})" : ''
            if (!e.patience)
                return "Early stopping off${best}".toString()
            return "Early stopping: no improvement of ${metric} for ${e.epochs_without_improvement ?: 0}/${e.patience} epochs${best}".toString()
        }

        static double ratio(Object done, Object total) {
            return total ? Math.min(1d, (done as double) / (total as double)) : -1d
        }

        static String num(Object v) {
            if (v == null)
                return '-'
            if (v instanceof Number)
                return String.format(Locale.ROOT, '%.4g', (v as Number).doubleValue())
            return v.toString()
        }
    }

    static Progress progress(String title) {
        return new Progress(title: title)
    }

    // -----------------------------------------------------------------------------------------------------------
    // Cancel

    /** A new cancel flag for DLPixel.request: 0 running, 1 stop after the current epoch (keep the best), 2 abort. */
    static AtomicInteger newCancel() {
        return new AtomicInteger(RUNNING)
    }

    /**
     * The Cancel button was pressed: raise the flag one step; returns what the button and status now say. The
     * first press stops training after the current epoch and keeps the best epoch so far; the second stops at once
     * and writes nothing.
     */
    static Map cancelPressed(AtomicInteger flag, Progress progress = null) {
        int level = flag.incrementAndGet()
        if (level > ABORT) {
            flag.set(ABORT)
            level = ABORT
        }
        if (level == STOP) {
            if (progress != null)
                progress.stopping = true
            return [button: 'Stop now', status: 'Stopping after this epoch; the best epoch so far is kept...',
                    disable: false]
        }
        return [button: 'Stopping...', status: 'Stopping now; nothing is written...', disable: true]
    }

    // -----------------------------------------------------------------------------------------------------------
    // What the project holds (off the JavaFX thread: these read image data)

    /** The hierarchy of an entry: the live one for the image open in QuPath, else the saved one. */
    static Object hierarchyOf(Object entry, Map live) {
        Object current = live?.project != null && live?.imageData != null ? live.project.getEntry(live.imageData) : null
        if (current != null && current.is(entry))
            return live.imageData.getHierarchy()
        if (current != null && current.getID() == entry.getID())
            return live.imageData.getHierarchy()
        return entry.hasImageData() ? entry.readHierarchy() : null
    }

    /** The names of the project's images that hold at least one classified annotation, in project order. */
    static List<String> annotatedImages(Object project, Map live = null) {
        List<String> names = []
        project.getImageList().each { entry ->
            Object hierarchy = hierarchyOf(entry, live)
            if (hierarchy != null && hierarchy.getAnnotationObjects().any { classified(it) })
                names << (entry.getImageName() as String)
        }
        return names
    }

    /** "Load classes from selected images": [[name, count, color (packed RGB or null)]], by name. */
    static List<Map> classesIn(Object project, List<String> imageNames, Map live = null) {
        Map<String, Map> found = new TreeMap<String, Map>()
        project.getImageList().each { entry ->
            if (imageNames && !((entry.getImageName() as String) in imageNames))
                return
            Object hierarchy = hierarchyOf(entry, live)
            if (hierarchy == null)
                return
            hierarchy.getAnnotationObjects().each { annotation ->
                if (!classified(annotation))
                    return
                Object pathClass = annotation.getPathClass()
                String name = pathClass.toString()
                Map c = found[name]
                if (c == null)
                    found[name] = c = [name: name, count: 0, color: pathClass.getColor()]
                c.count = (c.count as int) + 1
            }
        }
        return new ArrayList<Map>(found.values())
    }

    /** The channel names of the first of the named images (all images when none are named). */
    static List<String> channelsOf(Object project, List<String> imageNames) {
        Object entry = project.getImageList().find { !imageNames || (it.getImageName() as String) in imageNames }
        if (entry == null)
            return []
        Object server = entry.getServerBuilder().build()
        try {
            return server.getMetadata().getChannels().collect { it.getName() as String }
        } finally {
            server.close()
        }
    }

    static boolean classified(Object pathObject) {
        Object pathClass = pathObject.getPathClass()
        return pathClass != null && pathClass.getName() != null
    }

    /** A classifier as one line of the Manage models list. */
    static String describeModel(Map model) {
        String iou = model.mean_iou != null ? ", mean IoU ${Progress.num(model.mean_iou)}" : ''
        String classes = model.classes ? " [${(model.classes as List).join(', ')}]" : ''
        return "${model.name} (${model.backbone ?: '?'}${iou})${classes}".toString()
    }

    static String pretty(Object value) {
        return JsonOutput.prettyPrint(JsonOutput.toJson(value))
    }
}
