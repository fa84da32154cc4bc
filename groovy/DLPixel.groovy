import groovy.json.JsonOutput
import groovy.json.JsonSlurper

/**
 * dlpixel from QuPath's script editor: train and apply deep-learning pixel classifiers.
 *
 * Load it in a script with
 *     def DLPixel = new GroovyClassLoader(getClass().classLoader).parseClass(new File('.../DLPixel.groovy'))
 * and call DLPixel.train([...]), DLPixel.apply([...]), DLPixel.listModels(), DLPixel.loadSettings(name).
 *
 * A request goes to the Python entry point registered in this JVM (System property 'dlpixel.bridge', present when
 * QuPath runs inside Python) or, when there is none, to `python -m dlpixel request -` as a separate process on the
 * saved project. Either way the same JSON request is sent, progress events come back as maps, and a cancel flag
 * (an AtomicInteger: 1 stops after the current epoch keeping the best, 2 stops at once) reaches the run. A failed
 * request throws, so the script fails with the tool's one-line message.
 *
 * QuPath's scripting functions are looked up when needed, never compiled in: this file compiles and runs under a
 * plain Groovy (2.4 or later) too, where the project path and image names must be given in the request.
 */
class DLPixel {

    static final String BRIDGE_PROPERTY = 'dlpixel.bridge'
    static final String PYTHON_KEY = 'dlpixel.python'
    static final String PYTHON_ENV = 'DLPIXEL_PYTHON'
    static final String SETTINGS_FILE = 'dlpixel.json'
    static final List<String> WRITES_TO_IMAGE = ['measurements', 'objects']
    static final String CANCEL_FILE_ENV = 'DLPIXEL_CANCEL_FILE'

    // ---------------------------------------------------------------------------------------------------------
    // The script API

    /** Train a classifier: [project, name, images, settings, overwrite]; returns the tool's result map. */
    static Object train(Map req, Closure onEvent = null) {
        return request(withAction(req, 'train'), null, onEvent)
    }

    /** Apply a classifier: [project, classifier, images, settings]; empty images: the image open in QuPath. */
    static Object apply(Map req, Closure onEvent = null) {
        return request(withAction(req, 'apply'), null, onEvent)
    }

    /** Apply a classifier with output 'overlay' (settings as for apply) and show the class map on the image open in
     *  QuPath's viewer; returns the tool's result map. */
    static Object applyOverlay(Map req, Closure onEvent = null) {
        Map r = new LinkedHashMap(req ?: [:])
        Map settings = new LinkedHashMap((r.settings ?: [:]) as Map)
        settings.output = 'overlay'
        r.settings = settings
        Object result = apply(r, onEvent)
        String json = ((result instanceof Map ? result.written : null) ?: []).find { it.toString().endsWith('.overlay.json') }
        if (json != null && qp() != null)
            showOverlay(json)
        return result
    }

    /** Where an overlay written by apply lies on the image: [image: BufferedImage, x, y, width, height, z, t] in
     *  full-resolution pixels, from its .overlay.json. */
    static Map overlayRegion(String jsonPath) {
        File json = new File(jsonPath)
        Map info = new groovy.json.JsonSlurper().parse(json) as Map
        Object image = javax.imageio.ImageIO.read(new File(json.parentFile, info.png as String))
        List plane = (info.plane ?: [0, 0]) as List
        Map r = info.region as Map
        return [image: image, x: Math.round(r.x as double) as int, y: Math.round(r.y as double) as int,
                width: Math.round(r.width as double) as int, height: Math.round(r.height as double) as int,
                z: plane[0] as int, t: plane[1] as int]
    }

    /** Show an overlay written by apply (its .overlay.json) on the image open in QuPath's viewer, as QuPath shows a
     *  pixel classifier (View > Show pixel classification; the overlay opacity slider applies). */
    static Object showOverlay(String jsonPath, Object viewer = null) {
        Map o = overlayRegion(jsonPath)
        ClassLoader loader = DLPixel.classLoader
        Object region = Class.forName('qupath.lib.regions.ImageRegion', true, loader)
                .createInstance(o.x, o.y, o.width, o.height, o.z, o.t)
        if (viewer == null)
            viewer = Class.forName('qupath.lib.gui.QuPathGUI', true, loader).getInstance()?.getViewer()
        if (viewer == null)
            throw new RuntimeException('dlpixel: no QuPath viewer to show the overlay in')
        Class overlayClass = Class.forName('qupath.lib.gui.viewer.overlays.BufferedImageOverlay', true, loader)
        Object overlay = overlayClass.newInstance(viewer, [(region): o.image])
        viewer.getCustomOverlayLayers().add(overlay)
        log("dlpixel: showing ${new File(jsonPath).name} on the open image".toString())
        return overlay
    }

    /** The project's classifiers, newest first. */
    static Object listModels(Object project = null) {
        return request([action: 'list_models', project: project])
    }

    /** The settings a saved classifier was trained with. */
    static Object loadSettings(String classifier, Object project = null) {
        return request([action: 'load_settings', project: project, classifier: classifier])
    }

    /** A classifier's metadata and the path of its report (null when it has none). */
    static Object showModel(String classifier, Object project = null) {
        return request([action: 'show_model', project: project, classifier: classifier])
    }

    /** Delete a classifier's folder from the project. */
    static Object deleteModel(String classifier, Object project = null) {
        return request([action: 'delete_model', project: project, classifier: classifier])
    }

    /** Pack a classifier into a zip file (`dlpixel models import` reads it). */
    static Object exportModel(String classifier, String zipPath, Object project = null) {
        return request([action: 'export_model', project: project, classifier: classifier, path: zipPath])
    }

    /** The Groovy script that would run a train or apply request ("Copy as Script"). */
    static String script(Map req) {
        def result = request(withAction(req, 'script'))
        return (result instanceof Map ? result.script : result) as String
    }

    /**
     * Send any request and return its result. live holds QuPath's objects (project, imageData, selected); by
     * default those of the running script. onEvent receives each progress event as a map; cancel (an AtomicInteger
     * from newCancel()) stops the run when raised: 1 after the current epoch, keeping the best so far; 2 at once.
     */
    static Object request(Map req, Map live = null, Closure onEvent = null,
                          java.util.concurrent.atomic.AtomicInteger cancel = null) {
        Map context = live != null ? live : liveContext()
        Map full = complete(req, context)
        String json = JsonOutput.toJson(full)
        Object bridge = System.getProperties().get(BRIDGE_PROPERTY)
        Map reply
        if (bridge != null) {
            Map bridged = new LinkedHashMap(context)
            if (onEvent != null)
                bridged.events = eventConsumer(onEvent)
            if (cancel != null)
                bridged.cancel = cancel
            reply = parseReply(bridge.apply(json, bridged) as String)
        } else {
            boolean touchesImage = involvesCurrentImage(full, context)
            if (touchesImage)
                saveCurrentImage(context)
            reply = runProcess(json, onEvent, cancel)
            if (reply.ok && touchesImage && full.action == 'apply' && writesToImage(full))
                reloadCurrentImage(context)
        }
        if (!reply.ok)
            throw new RuntimeException('dlpixel: ' + (reply.error ?: 'the request failed without a message'))
        return reply.result
    }

    /** A new cancel flag for request(): raise it with incrementAndGet() (from any thread). */
    static java.util.concurrent.atomic.AtomicInteger newCancel() {
        return new java.util.concurrent.atomic.AtomicInteger(0)
    }

    /** The bridge's progress callback: each JSON event line, logged and handed to onEvent as a map. */
    static java.util.function.Consumer<String> eventConsumer(Closure onEvent) {
        return { String line ->
            Map event = parseEvent(line)
            if (event != null) {
                log(describe(event))
                onEvent.call(event)
            }
        } as java.util.function.Consumer
    }

    /** Remember the Python executable that runs dlpixel (a QuPath preference, kept between sessions). */
    static void setPython(String path) {
        def prefs = quPathPreferences()
        if (prefs == null)
            throw new IllegalStateException('QuPath preferences are not available; set DLPIXEL_PYTHON instead')
        prefs.put(PYTHON_KEY, path)
        prefs.flush()
    }

    /**
     * The Python executable: system property dlpixel.python, environment variable DLPIXEL_PYTHON, QuPath's
     * preference dlpixel.python, then the 'python' recorded by `dlpixel qupath install` in dlpixel.json beside
     * this file. Never looked up on PATH: QuPath rarely runs with the user's Python environment active.
     */
    static String python() {
        String found = System.getProperty(PYTHON_KEY) ?: System.getenv(PYTHON_ENV)
        if (!found) {
            def prefs = quPathPreferences()
            found = prefs?.get(PYTHON_KEY, null)
        }
        if (!found)
            found = installSettings().python
        if (!found)
            throw new RuntimeException('dlpixel: no Python executable is set. Run `dlpixel qupath install` in the ' +
                    'Python environment that has dlpixel, or set DLPIXEL_PYTHON, or use Extensions > ' +
                    'DL Pixel Classifier > Python executable...')
        return found
    }

    /** What `dlpixel qupath install` recorded beside this file (python, helper, defaults), or an empty map. */
    static Map installSettings() {
        File dir = helperDir()
        File file = dir == null ? null : new File(dir, SETTINGS_FILE)
        if (file == null || !file.isFile())
            return [:]
        return new JsonSlurper().parse(file, 'UTF-8') as Map
    }

    /** The folder this helper was loaded from, when it was loaded from a file. */
    static File helperDir() {
        try {
            URL location = DLPixel.protectionDomain?.codeSource?.location
            if (location == null || location.protocol != 'file')
                return null
            File file = new File(location.toURI())
            return file.isDirectory() ? file : file.parentFile
        } catch (Exception ignored) {
            return null
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Requests

    private static Map withAction(Map req, String action) {
        Map out = new LinkedHashMap(req)
        if (action == 'script') {
            if (!out.kind)
                out.kind = out.containsKey('classifier') ? 'apply' : 'train'
        }
        out.action = action
        return out
    }

    /** The request as sent: project as a path, images as names, the image open in QuPath for an empty apply. */
    static Map complete(Map request, Map context) {
        Map out = new LinkedHashMap()
        out.action = request.action
        request.each { k, v -> if (k != 'action') out[k] = v }
        out.project = projectPath(request.project ?: context.project)
        if (out.project == null)
            throw new RuntimeException('dlpixel: no project: open a project in QuPath or set project in the script')
        if (out.action in ['train', 'apply'] || (out.action == 'script' && request.containsKey('images'))) {
            List names = (request.images ?: []).collect { it as String }
            if (out.action == 'apply' && names.isEmpty()) {
                String current = currentImageName(context)
                if (current != null)
                    names = [current]
            }
            out.images = names
        }
        if (out.action == 'apply' && request.settings instanceof Map && request.settings.scope == 'selected'
                && System.getProperties().get(BRIDGE_PROPERTY) == null) {
            out.selected = (context.selected ?: []).collect { it.getID().toString() }
        }
        return out
    }

    private static String projectPath(Object project) {
        if (project == null)
            return null
        if (project instanceof CharSequence || project instanceof File)
            return project.toString()
        if (project instanceof java.nio.file.Path)
            return project.toString()
        Object path = project.getPath()
        return path == null ? null : path.toString()
    }

    private static boolean writesToImage(Map request) {
        Object output = request.settings instanceof Map ? request.settings.output : null
        return output in WRITES_TO_IMAGE
    }

    private static Map parseReply(String text) {
        Object reply = new JsonSlurper().parseText(text)
        if (!(reply instanceof Map) || !reply.containsKey('ok'))
            throw new RuntimeException('dlpixel: unexpected reply: ' + text.take(200))
        return reply as Map
    }

    /**
     * Run `python -m dlpixel request - --events jsonl`, logging its events, and return its result event. Raising
     * cancel writes the file named in DLPIXEL_CANCEL_FILE (the process stops after the current epoch and keeps the
     * best), raising it again stops the process at once.
     */
    static Map runProcess(String json, Closure onEvent = null, java.util.concurrent.atomic.AtomicInteger cancel = null) {
        List<String> command = [python(), '-m', 'dlpixel', 'request', '-', '--events', 'jsonl']
        File cancelFile = File.createTempFile('dlpixel-cancel-', '.txt')
        cancelFile.delete()
        ProcessBuilder builder = new ProcessBuilder(command)
        builder.environment().put(CANCEL_FILE_ENV, cancelFile.absolutePath)
        Process process
        try {
            process = builder.start()
        } catch (IOException e) {
            throw new RuntimeException("dlpixel: cannot run ${command[0]}: ${e.message}".toString())
        }
        Map stopped = [level: 0]
        Thread watcher = cancel == null ? null : Thread.start {
            while (process.isAlive()) {
                int level = cancel.get()
                if (level >= 1 && stopped.level < 1) {
                    cancelFile.setText('stop', 'UTF-8')
                    stopped.level = 1
                }
                if (level >= 2 && stopped.level < 2) {
                    stopped.level = 2
                    process.destroy()
                }
                try {
                    Thread.sleep(100)
                } catch (InterruptedException ignored) {
                    return
                }
            }
        }
        List<String> errors = Collections.synchronizedList(new ArrayList<String>())
        Thread errReader = Thread.start {
            process.errorStream.eachLine('UTF-8') { String line ->
                errors << line
                if (errors.size() > 40)
                    errors.remove(0)
            }
        }
        Map holder = [result: null]
        Thread outReader = Thread.start {
            process.inputStream.eachLine('UTF-8') { String line ->
                Map event = parseEvent(line)
                if (event == null) {
                    if (line.trim())
                        log(line)
                } else if (event.event == 'result') {
                    holder.result = event
                } else {
                    log(describe(event))
                    if (onEvent != null)
                        onEvent.call(event)
                }
            }
        }
        process.outputStream.withWriter('UTF-8') { it << json }
        int code
        try {
            code = process.waitFor()
            outReader.join()
            errReader.join()
        } catch (InterruptedException e) {
            process.destroy()
            throw new RuntimeException('dlpixel: cancelled')
        } finally {
            watcher?.interrupt()
            cancelFile.delete()
        }
        Map result = holder.result as Map
        if (result == null && stopped.level >= 2)
            return [ok: false, error: 'cancelled; nothing was written']
        if (result != null && (code == 0 || !result.ok))
            return result
        String detail = errors ? errors[-1] : 'no message'
        if (result != null)
            return [ok: false, error: "exited with code ${code}: ${detail}".toString()]
        return [ok: false, error: "${command[0]} exited with code ${code} without a result: ${detail}".toString()]
    }

    /** One `--events jsonl` line as a map; null for any other line. */
    static Map parseEvent(String line) {
        String text = line.trim()
        if (!text.startsWith('{'))
            return null
        try {
            Object parsed = new JsonSlurper().parseText(text)
            return parsed instanceof Map && parsed.containsKey('event') ? parsed as Map : null
        } catch (Exception ignored) {
            return null
        }
    }

    static String describe(Map event) {
        if (event.message)
            return event.message as String
        return event.event + ' ' + event.findAll { k, v -> k != 'event' }.collect { k, v -> "${k}=${v}" }.join(' ')
    }

    // ---------------------------------------------------------------------------------------------------------
    // QuPath, found at run time

    /** QuPath's scripting class (QP), or null outside QuPath. */
    static Class qp() {
        for (String name : ['qupath.lib.scripting.QP', 'qupath.lib.gui.scripting.QPEx']) {
            for (ClassLoader loader : [DLPixel.classLoader, Thread.currentThread().contextClassLoader]) {
                try {
                    if (loader != null)
                        return Class.forName(name, true, loader)
                } catch (ClassNotFoundException ignored) {
                } catch (LinkageError ignored) {
                }
            }
        }
        return null
    }

    /** The running script's project, image data and selected objects; empty outside QuPath. */
    static Map liveContext() {
        Class qp = qp()
        if (qp == null)
            return [project: null, imageData: null, selected: []]
        Map context = [project: qp.getProject(), imageData: qp.getCurrentImageData()]
        context.selected = context.imageData == null ? [] : new ArrayList(qp.getSelectedObjects() ?: [])
        return context
    }

    private static Object currentEntry(Map context) {
        if (context.project == null || context.imageData == null)
            return null
        return context.project.getEntry(context.imageData)
    }

    private static String currentImageName(Map context) {
        Object entry = currentEntry(context)
        return entry == null ? null : entry.getImageName() as String
    }

    private static boolean involvesCurrentImage(Map request, Map context) {
        if (!(request.action in ['train', 'apply']))
            return false
        String name = currentImageName(context)
        if (name == null)
            return false
        if (context.project != null && projectPath(context.project) != request.project)
            return false
        return request.images.isEmpty() || name in request.images
    }

    /** Save the open image so that a separate dlpixel process sees its latest annotations. */
    static void saveCurrentImage(Map context) {
        Object entry = currentEntry(context)
        if (entry != null) {
            entry.saveImageData(context.imageData)
            log("dlpixel: saved ${entry.getImageName()} before running".toString())
        }
    }

    /** Load what dlpixel wrote into the open image, in place, so the viewer and a batch save keep it. */
    static void reloadCurrentImage(Map context) {
        Object entry = currentEntry(context)
        if (entry == null)
            return
        Object saved = entry.readImageData()
        context.imageData.getHierarchy().setHierarchy(saved.getHierarchy())
        log("dlpixel: reloaded ${entry.getImageName()} with the results".toString())
    }

    private static Object quPathPreferences() {
        for (ClassLoader loader : [DLPixel.classLoader, Thread.currentThread().contextClassLoader]) {
            try {
                if (loader != null)
                    return Class.forName('qupath.lib.gui.prefs.PathPrefs', true, loader).getUserPreferences()
            } catch (ClassNotFoundException ignored) {
            } catch (LinkageError ignored) {
            } catch (MissingMethodException ignored) {
            }
        }
        return null
    }

    /** QuPath's log when it is there (View > Show log), standard output otherwise. */
    static void log(String message) {
        Object logger = null
        try {
            logger = Class.forName('org.slf4j.LoggerFactory', true, DLPixel.classLoader).getLogger('dlpixel')
        } catch (Exception ignored) {
        } catch (LinkageError ignored) {
        }
        if (logger != null)
            logger.info(message)
        else
            System.out.println(message)
    }
}
