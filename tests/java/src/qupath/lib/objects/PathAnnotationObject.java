package qupath.lib.objects;

import qupath.lib.measurements.MeasurementList;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.roi.interfaces.ROI;

/** An annotation: a ROI drawn or created for a region of interest. */
public class PathAnnotationObject extends PathObject {

	private static final long serialVersionUID = 1L;

	PathAnnotationObject(ROI roi, PathClass pathClass, MeasurementList measurements) {
		super(roi, pathClass, measurements);
	}

	@Override
	public boolean isAnnotation() { return true; }
}
