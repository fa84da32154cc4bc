package qupath.lib.images.servers;

import java.util.List;

/** What a server knows about its image, as in QuPath (the fields the bridge reads). */
public class ImageServerMetadata {

	private final String name;
	private final int width, height;
	private final PixelType pixelType;
	private final boolean isRGB;
	private final List<ImageChannel> channels;
	private final PixelCalibration calibration;
	private final int tileWidth, tileHeight;

	ImageServerMetadata(String name, int width, int height, PixelType pixelType, boolean isRGB,
			List<ImageChannel> channels, PixelCalibration calibration, int tileWidth, int tileHeight) {
		this.name = name;
		this.width = width;
		this.height = height;
		this.pixelType = pixelType;
		this.isRGB = isRGB;
		this.channels = List.copyOf(channels);
		this.calibration = calibration;
		this.tileWidth = tileWidth;
		this.tileHeight = tileHeight;
	}

	public String getName() { return name; }
	public int getWidth() { return width; }
	public int getHeight() { return height; }
	public PixelType getPixelType() { return pixelType; }
	public boolean isRGB() { return isRGB; }
	public List<ImageChannel> getChannels() { return channels; }
	public ImageChannel getChannel(int i) { return channels.get(i); }
	public int getSizeC() { return channels.size(); }
	public PixelCalibration getPixelCalibration() { return calibration; }
	public int getPreferredTileWidth() { return tileWidth; }
	public int getPreferredTileHeight() { return tileHeight; }
}
