package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** QuPath's factory for objects. */
public class PathObjects {

	private PathObjects() {}

	public static PathObject createAnnotationObject(ROI roi) {
		return createAnnotationObject(roi, null, null);
	}

	public static PathObject createAnnotationObject(ROI roi, PathClass pathClass) {
		return createAnnotationObject(roi, pathClass, null);
	}

	public static PathObject createAnnotationObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
		return new PathAnnotationObject(roi, pathClass, measurements);
	}

	public static PathObject createDetectionObject(ROI roi) {
		return createDetectionObject(roi, null, null);
	}

	public static PathObject createDetectionObject(ROI roi, PathClass pathClass) {
		return createDetectionObject(roi, pathClass, null);
	}

	public static PathObject createDetectionObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
		return new PathDetectionObject(roi, pathClass, measurements);
	}
}
