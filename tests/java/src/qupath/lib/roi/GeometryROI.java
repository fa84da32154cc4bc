package qupath.lib.roi;

import org.locationtech.jts.geom.Envelope;
import org.locationtech.jts.geom.Geometry;
import org.locationtech.jts.geom.Lineal;
import org.locationtech.jts.geom.Puntal;

import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.interfaces.ROI;

/**
 * A ROI over a JTS geometry. QuPath keeps polygons, polylines and points in their own ROI classes with float
 * vertices; here every ROI is one of these.
 */
public class GeometryROI implements ROI, java.io.Serializable {

	private static final long serialVersionUID = 1L;

	private final Geometry geometry;
	private final ImagePlane plane;

	GeometryROI(Geometry geometry, ImagePlane plane) {
		this.geometry = geometry;
		this.plane = plane == null ? ImagePlane.getDefaultPlane() : plane;
	}

	@Override
	public String getRoiName() {
		return isArea() ? "Polygon" : isLine() ? "Polyline" : "Points";
	}

	@Override
	public RoiType getRoiType() {
		if (geometry instanceof Puntal)
			return RoiType.POINT;
		if (geometry instanceof Lineal)
			return RoiType.LINE;
		return RoiType.AREA;
	}

	@Override public boolean isArea() { return getRoiType() == RoiType.AREA; }
	@Override public boolean isLine() { return getRoiType() == RoiType.LINE; }
	@Override public boolean isPoint() { return getRoiType() == RoiType.POINT; }
	@Override public Geometry getGeometry() { return geometry.copy(); }
	@Override public ImagePlane getImagePlane() { return plane; }
	@Override public int getZ() { return plane.getZ(); }
	@Override public int getT() { return plane.getT(); }
	@Override public double getBoundsX() { return env().getMinX(); }
	@Override public double getBoundsY() { return env().getMinY(); }
	@Override public double getBoundsWidth() { return env().getWidth(); }
	@Override public double getBoundsHeight() { return env().getHeight(); }
	@Override public double getArea() { return geometry.getArea(); }
	@Override public double getLength() { return geometry.getLength(); }
	@Override public int getNumPoints() { return geometry.getNumPoints(); }

	private Envelope env() {
		return geometry.getEnvelopeInternal();
	}
}
