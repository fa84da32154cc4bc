package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** A detection: an object found by an algorithm. */
public class PathDetectionObject extends PathObject {

	private static final long serialVersionUID = 1L;

	PathDetectionObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
		super(roi, pathClass, measurements);
	}

	@Override
	public boolean isDetection() { return true; }
}
