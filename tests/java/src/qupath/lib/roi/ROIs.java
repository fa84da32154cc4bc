package qupath.lib.roi;

import org.locationtech.jts.geom.Coordinate;

import qupath.lib.regions.ImagePlane;
import qupath.lib.roi.interfaces.ROI;

/** QuPath's ROI factory (the shapes the tests draw). */
public class ROIs {

	private ROIs() {}

	public static ROI createPolygonROI(double[] x, double[] y, ImagePlane plane) {
		Coordinate[] c = coords(x, y, true);
		return new GeometryROI(GeometryTools.getDefaultFactory().createPolygon(c), plane);
	}

	public static ROI createPolylineROI(double[] x, double[] y, ImagePlane plane) {
		return new GeometryROI(GeometryTools.getDefaultFactory().createLineString(coords(x, y, false)), plane);
	}

	public static ROI createRectangleROI(double x, double y, double width, double height, ImagePlane plane) {
		return createPolygonROI(new double[] {x, x + width, x + width, x}, new double[] {y, y, y + height, y + height}, plane);
	}

	public static ROI createPointsROI(double[] x, double[] y, ImagePlane plane) {
		return new GeometryROI(GeometryTools.getDefaultFactory().createMultiPointFromCoords(coords(x, y, false)), plane);
	}

	private static Coordinate[] coords(double[] x, double[] y, boolean close) {
		int n = x.length;
		boolean closed = n > 0 && x[0] == x[n - 1] && y[0] == y[n - 1];
		Coordinate[] c = new Coordinate[close && !closed ? n + 1 : n];
		for (int i = 0; i < n; i++)
			c[i] = new Coordinate(x[i], y[i]);
		if (c.length > n)
			c[n] = new Coordinate(x[0], y[0]);
		return c;
	}
}
