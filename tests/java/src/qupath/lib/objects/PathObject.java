package qupath.lib.objects;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.List;
import java.util.UUID;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.measurements.MeasurementListFactory;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** QuPath's base object: a ROI, a class, a name, a UUID, measurements, children. */
public abstract class PathObject implements Serializable {

	private static final long serialVersionUID = 1L;

	private UUID id = UUID.randomUUID();
	private PathObject parent;
	private final List<PathObject> children = new ArrayList<>();
	private final ROI roi;
	private PathClass pathClass;
	private String name;
	private MeasurementList measurements;

	protected PathObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
		this.roi = roi;
		this.pathClass = pathClass;
		this.measurements = measurements;
	}

	public UUID getID() { return id; }
	public void setID(UUID id) { this.id = id; }
	public ROI getROI() { return roi; }
	public boolean hasROI() { return roi != null; }
	public PathClass getPathClass() { return pathClass; }
	public void setPathClass(PathClass pathClass) { this.pathClass = pathClass; }
	public String getName() { return name; }
	public void setName(String name) { this.name = name; }
	public PathObject getParent() { return parent; }
	public boolean isAnnotation() { return false; }
	public boolean isDetection() { return false; }
	public boolean isRootObject() { return false; }

	public synchronized MeasurementList getMeasurementList() {
		if (measurements == null)
			measurements = MeasurementListFactory.createMeasurementList(16, MeasurementList.MeasurementListType.GENERAL);
		return measurements;
	}

	public boolean hasChildObjects() { return !children.isEmpty(); }
	public int nChildObjects() { return children.size(); }

	public Collection<PathObject> getChildObjects() {
		return Collections.unmodifiableList(new ArrayList<>(children));
	}

	public void addChildObject(PathObject child) {
		if (child.parent != null)
			child.parent.children.remove(child);
		child.parent = this;
		children.add(child);
	}

	public void removeChildObject(PathObject child) {
		if (children.remove(child))
			child.parent = null;
	}

	@Override
	public String toString() {
		return getClass().getSimpleName() + " (" + (name == null ? (pathClass == null ? "Unclassified" : pathClass) : name) + ")";
	}
}
