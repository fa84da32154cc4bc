package qupath.lib.roi;

import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.GeometryFactory;
import org.locationtech.jts.geom.PrecisionModel;
import org.locationtech.jts.geom.impl.PackedCoordinateSequenceFactory;

import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.interfaces.ROI;

/** QuPath's conversions between JTS geometries and ROIs; the factory is QuPath 0.5's (1/100 px grid, float). */
public class GeometryTools {

	private static final GeometryFactory DEFAULT_FACTORY = new GeometryFactory(
			new PrecisionModel(100.0), 0, PackedCoordinateSequenceFactory.FLOAT_FACTORY);

	private GeometryTools() {}

	public static GeometryFactory getDefaultFactory() {
		return DEFAULT_FACTORY;
	}

	public static ROI geometryToROI(Geometry geometry, ImagePlane plane) {
		return new GeometryROI(DEFAULT_FACTORY.createGeometry(geometry), plane);
	}

	public static Geometry roiToGeometry(ROI roi) {
		return roi.getGeometry();
	}
}
