package qupath.lib.objects.hierarchy;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.function.Predicate;

import qupath.lib.objects.PathObject;
import qupath.lib.objects.PathRootObject;

/**
 * QuPath's object hierarchy, reduced to what the bridge calls. Objects added here become children of the root
 * (QuPath would nest them by containment); queries walk the whole tree, as QuPath's do.
 */
public class PathObjectHierarchy implements Serializable {

	private static final long serialVersionUID = 1L;

	private final PathRootObject root = new PathRootObject();

	public PathObject getRootObject() { return root; }

	public synchronized boolean addObject(PathObject pathObject) {
		root.addChildObject(pathObject);
		return true;
	}

	public synchronized boolean addObjects(Collection<? extends PathObject> pathObjects) {
		for (PathObject o : pathObjects)
			root.addChildObject(o);
		return !pathObjects.isEmpty();
	}

	public synchronized void removeObject(PathObject pathObject, boolean keepChildren) {
		removeObjects(List.of(pathObject), keepChildren);
	}

	public synchronized void removeObjects(Collection<? extends PathObject> pathObjects, boolean keepChildren) {
		for (PathObject o : pathObjects) {
			PathObject parent = o.getParent();
			if (parent == null)
				continue;
			parent.removeChildObject(o);
			if (keepChildren)
				for (PathObject child : o.getChildObjects())
					parent.addChildObject(child);
		}
	}

	public Collection<PathObject> getAnnotationObjects() {
		return collect(PathObject::isAnnotation);
	}

	public Collection<PathObject> getDetectionObjects() {
		return collect(PathObject::isDetection);
	}

	public Collection<PathObject> getAllObjects(boolean includeRoot) {
		return collect(o -> includeRoot || !o.isRootObject());
	}

	public int nObjects() {
		return collect(o -> !o.isRootObject()).size();
	}

	public boolean isEmpty() {
		return !root.hasChildObjects();
	}

	public void resolveHierarchy() {}

	public void fireHierarchyChangedEvent(Object source) {}

	private synchronized List<PathObject> collect(Predicate<PathObject> keep) {
		List<PathObject> out = new ArrayList<>();
		List<PathObject> stack = new ArrayList<>(List.of(root));
		while (!stack.isEmpty()) {
			PathObject o = stack.remove(stack.size() - 1);
			if (keep.test(o))
				out.add(o);
			List<PathObject> kids = new ArrayList<>(o.getChildObjects());
			for (int i = kids.size() - 1; i >= 0; i--)
				stack.add(kids.get(i));
		}
		return out;
	}
}
