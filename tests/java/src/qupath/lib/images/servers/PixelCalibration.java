package qupath.lib.images.servers;

/** Pixel size in µm (NaN when unknown), as in QuPath. */
public class PixelCalibration {

	private final double pixelWidthMicrons;
	private final double pixelHeightMicrons;

	PixelCalibration(double pixelWidthMicrons, double pixelHeightMicrons) {
		this.pixelWidthMicrons = pixelWidthMicrons;
		this.pixelHeightMicrons = pixelHeightMicrons;
	}

	public boolean hasPixelSizeMicrons() {
		return Double.isFinite(pixelWidthMicrons) && Double.isFinite(pixelHeightMicrons);
	}

	public double getPixelWidthMicrons() { return pixelWidthMicrons; }
	public double getPixelHeightMicrons() { return pixelHeightMicrons; }
	public double getAveragedPixelSizeMicrons() { return (pixelWidthMicrons + pixelHeightMicrons) / 2.0; }
}
