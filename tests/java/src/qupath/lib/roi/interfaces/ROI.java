package qupath.lib.roi.interfaces;

import org.locationtech.jts.geom.Geometry;

import qupath.lib.regions.ImagePlane;

/** QuPath's region of interest, reduced to what the bridge calls. */
public interface ROI {

	enum RoiType { AREA, LINE, POINT }

	String getRoiName();

	RoiType getRoiType();

	boolean isArea();

	boolean isLine();

	boolean isPoint();

	Geometry getGeometry();

	ImagePlane getImagePlane();

	int getZ();

	int getT();

	double getBoundsX();

	double getBoundsY();

	double getBoundsWidth();

	double getBoundsHeight();

	double getArea();

	double getLength();

	int getNumPoints();
}
