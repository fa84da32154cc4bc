package qupath.lib.images.servers;

import java.awt.color.ColorSpace;
import java.awt.image.BandedSampleModel;
import java.awt.image.BufferedImage;
import java.awt.image.ColorModel;
import java.awt.image.DataBuffer;
import java.awt.image.DataBufferByte;
import java.awt.image.DataBufferDouble;
import java.awt.image.DataBufferFloat;
import java.awt.image.DataBufferInt;
import java.awt.image.DataBufferShort;
import java.awt.image.DataBufferUShort;
import java.awt.image.Raster;
import java.awt.image.WritableRaster;
import java.io.File;
import java.io.IOException;
import java.net.URI;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

import javax.imageio.ImageIO;
import javax.imageio.ImageReader;
import javax.imageio.plugins.tiff.BaselineTIFFTagSet;
import javax.imageio.plugins.tiff.TIFFDirectory;
import javax.imageio.plugins.tiff.TIFFField;
import javax.imageio.stream.ImageInputStream;

import qupath.lib.images.servers.ImageServerBuilder.ServerBuilder;
import qupath.lib.regions.RegionRequest;

/**
 * Stand-in only (no such class in QuPath): a TIFF whose pages are the pyramid levels, largest first, read whole with
 * javax.imageio. Images come out as QuPath's do: 8-bit RGB as TYPE_INT_RGB, anything else banded (one bank per
 * channel). Reads at a level's downsample copy that level's pixels; other downsamples take the nearest pixel centre.
 */
public class StandInTiffServer implements ImageServer<BufferedImage> {

	private final URI uri;
	private final List<BufferedImage> levels = new ArrayList<>();
	private final double[] downsamples;
	private final ImageServerMetadata metadata;

	StandInTiffServer(URI uri) throws IOException {
		this.uri = uri;
		File file = Paths.get(uri).toFile();
		double pixelSize = Double.NaN;
		try (ImageInputStream stream = ImageIO.createImageInputStream(file)) {
			Iterator<ImageReader> readers = ImageIO.getImageReaders(stream);
			if (!readers.hasNext())
				throw new IOException("Unable to build ImageServer for " + uri + ": not a readable TIFF");
			ImageReader reader = readers.next();
			reader.setInput(stream);
			int n = reader.getNumImages(true);
			for (int i = 0; i < n; i++)
				levels.add(toQuPathLayout(reader.read(i)));
			pixelSize = readPixelSizeMicrons(reader);
			reader.dispose();
		}
		BufferedImage base = levels.get(0);
		downsamples = new double[levels.size()];
		for (int i = 0; i < levels.size(); i++)
			downsamples[i] = (double) base.getWidth() / levels.get(i).getWidth();
		int nBands = base.getRaster().getNumBands();
		PixelType type = pixelType(base.getRaster().getDataBuffer().getDataType());
		boolean rgb = base.getType() == BufferedImage.TYPE_INT_RGB;
		List<ImageChannel> channels = new ArrayList<>();
		if (rgb) {
			channels.add(ImageChannel.getInstance("Red", 0xff0000));
			channels.add(ImageChannel.getInstance("Green", 0x00ff00));
			channels.add(ImageChannel.getInstance("Blue", 0x0000ff));
		} else {
			for (int c = 0; c < nBands; c++)
				channels.add(ImageChannel.getInstance("Channel " + (c + 1), 0xffffff));
		}
		String name = Paths.get(uri).getFileName().toString();
		metadata = new ImageServerMetadata(name, base.getWidth(), base.getHeight(), rgb ? PixelType.UINT8 : type, rgb,
				channels, new PixelCalibration(pixelSize, pixelSize), 256, 256);
	}

	private static double readPixelSizeMicrons(ImageReader reader) throws IOException {
		TIFFDirectory dir = TIFFDirectory.createFromMetadata(reader.getImageMetadata(0));
		TIFFField xres = dir.getTIFFField(BaselineTIFFTagSet.TAG_X_RESOLUTION);
		TIFFField unit = dir.getTIFFField(BaselineTIFFTagSet.TAG_RESOLUTION_UNIT);
		if (xres == null || unit == null)
			return Double.NaN;
		long[] r = xres.getAsRational(0);
		double perUnit = (double) r[0] / r[1];
		int u = unit.getAsInt(0);
		if (u == BaselineTIFFTagSet.RESOLUTION_UNIT_CENTIMETER)
			return 1e4 / perUnit;
		if (u == BaselineTIFFTagSet.RESOLUTION_UNIT_INCH)
			return 25400.0 / perUnit;
		return Double.NaN;
	}

	private static PixelType pixelType(int dataType) {
		switch (dataType) {
			case DataBuffer.TYPE_BYTE: return PixelType.UINT8;
			case DataBuffer.TYPE_USHORT: return PixelType.UINT16;
			case DataBuffer.TYPE_SHORT: return PixelType.INT16;
			case DataBuffer.TYPE_INT: return PixelType.INT32;
			case DataBuffer.TYPE_FLOAT: return PixelType.FLOAT32;
			case DataBuffer.TYPE_DOUBLE: return PixelType.FLOAT64;
			default: throw new IllegalArgumentException("Unsupported data type " + dataType);
		}
	}

	private static BufferedImage toQuPathLayout(BufferedImage img) {
		Raster src = img.getRaster();
		int w = img.getWidth(), h = img.getHeight(), nb = src.getNumBands();
		int dataType = src.getDataBuffer().getDataType();
		if (nb == 3 && dataType == DataBuffer.TYPE_BYTE) {
			BufferedImage out = new BufferedImage(w, h, BufferedImage.TYPE_INT_RGB);
			int[] px = ((DataBufferInt) out.getRaster().getDataBuffer()).getData();
			int[] s = src.getPixels(0, 0, w, h, (int[]) null);
			for (int i = 0; i < w * h; i++)
				px[i] = (s[3 * i] << 16) | (s[3 * i + 1] << 8) | s[3 * i + 2];
			return out;
		}
		BufferedImage out = createBanded(dataType, w, h, nb);
		WritableRaster dst = out.getRaster();
		double[] row = new double[w];
		for (int b = 0; b < nb; b++)
			for (int y = 0; y < h; y++)
				dst.setSamples(0, y, w, 1, b, src.getSamples(0, y, w, 1, b, row));
		return out;
	}

	private static BufferedImage createBanded(int dataType, int w, int h, int nBands) {
		DataBuffer buffer;
		switch (dataType) {
			case DataBuffer.TYPE_BYTE: buffer = new DataBufferByte(w * h, nBands); break;
			case DataBuffer.TYPE_USHORT: buffer = new DataBufferUShort(w * h, nBands); break;
			case DataBuffer.TYPE_SHORT: buffer = new DataBufferShort(w * h, nBands); break;
			case DataBuffer.TYPE_INT: buffer = new DataBufferInt(w * h, nBands); break;
			case DataBuffer.TYPE_FLOAT: buffer = new DataBufferFloat(w * h, nBands); break;
			case DataBuffer.TYPE_DOUBLE: buffer = new DataBufferDouble(w * h, nBands); break;
			default: throw new IllegalArgumentException("Unsupported data type " + dataType);
		}
		WritableRaster raster = Raster.createWritableRaster(new BandedSampleModel(dataType, w, h, nBands), buffer, null);
		return new BufferedImage(new ChannelsColorModel(DataBuffer.getDataTypeSize(dataType), dataType), raster, false, null);
	}

	private static Object bank(DataBuffer buffer, int bank) {
		if (buffer instanceof DataBufferInt b) return b.getData(bank);
		if (buffer instanceof DataBufferByte b) return b.getData(bank);
		if (buffer instanceof DataBufferUShort b) return b.getData(bank);
		if (buffer instanceof DataBufferShort b) return b.getData(bank);
		if (buffer instanceof DataBufferFloat b) return b.getData(bank);
		return ((DataBufferDouble) buffer).getData(bank);
	}

	@Override
	public BufferedImage readRegion(RegionRequest request) throws IOException {
		double d = request.getDownsample();
		int x = request.getX(), y = request.getY(), w = request.getWidth(), h = request.getHeight();
		if (x >= getWidth() || y >= getHeight() || x + w <= 0 || y + h <= 0)
			return null;
		int level = 0;
		for (int i = 0; i < downsamples.length; i++)
			if (downsamples[i] <= d * (1 + 1e-9))
				level = i;
		BufferedImage src = levels.get(level);
		double ld = downsamples[level];
		int outW = (int) Math.max(1, Math.round(w / d));
		int outH = (int) Math.max(1, Math.round(h / d));
		BufferedImage out = src.getType() == BufferedImage.TYPE_INT_RGB
				? new BufferedImage(outW, outH, BufferedImage.TYPE_INT_RGB)
				: createBanded(src.getRaster().getDataBuffer().getDataType(), outW, outH, src.getRaster().getNumBands());
		int sw = src.getWidth(), sh = src.getHeight();
		int[] sx = new int[outW];
		for (int i = 0; i < outW; i++)
			sx[i] = (int) Math.floor((x + (i + 0.5) * d) / ld);
		DataBuffer sBuf = src.getRaster().getDataBuffer(), dBuf = out.getRaster().getDataBuffer();
		for (int b = 0; b < sBuf.getNumBanks(); b++) {
			Object s = bank(sBuf, b), o = bank(dBuf, b);
			for (int j = 0; j < outH; j++) {
				int syj = (int) Math.floor((y + (j + 0.5) * d) / ld);
				if (syj < 0 || syj >= sh)
					continue;
				int i0 = 0, i1 = outW;
				while (i0 < outW && sx[i0] < 0) i0++;
				while (i1 > i0 && sx[i1 - 1] >= sw) i1--;
				if (i1 > i0 && sx[i1 - 1] - sx[i0] == i1 - 1 - i0) {
					System.arraycopy(s, syj * sw + sx[i0], o, j * outW + i0, i1 - i0);
				} else {
					for (int i = i0; i < i1; i++)
						System.arraycopy(s, syj * sw + sx[i], o, j * outW + i, 1);
				}
			}
		}
		return out;
	}

	@Override
	public BufferedImage readRegion(double downsample, int x, int y, int width, int height) throws IOException {
		return readRegion(RegionRequest.createInstance(getPath(), downsample, x, y, width, height));
	}

	@Override public String getPath() { return uri.toString(); }
	@Override public Collection<URI> getURIs() { return List.of(uri); }
	@Override public double[] getPreferredDownsamples() { return downsamples.clone(); }
	@Override public int nResolutions() { return downsamples.length; }
	@Override public double getDownsampleForResolution(int level) { return downsamples[level]; }
	@Override public int getWidth() { return metadata.getWidth(); }
	@Override public int getHeight() { return metadata.getHeight(); }
	@Override public int nChannels() { return metadata.getSizeC(); }
	@Override public boolean isRGB() { return metadata.isRGB(); }
	@Override public int nZSlices() { return 1; }
	@Override public int nTimepoints() { return 1; }
	@Override public PixelType getPixelType() { return metadata.getPixelType(); }
	@Override public ImageChannel getChannel(int channel) { return metadata.getChannel(channel); }
	@Override public ImageServerMetadata getMetadata() { return metadata; }
	@Override public PixelCalibration getPixelCalibration() { return metadata.getPixelCalibration(); }
	@Override public Class<BufferedImage> getImageClass() { return BufferedImage.class; }
	@Override public ServerBuilder<BufferedImage> getBuilder() { return new Builder(uri); }
	@Override public void close() {}

	/** Reopens a stand-in server from its URI; what a project entry stores. */
	public static class Builder implements ServerBuilder<BufferedImage> {

		private final URI uri;

		public Builder(URI uri) {
			this.uri = uri;
		}

		@Override
		public ImageServer<BufferedImage> build() throws Exception {
			return ImageServers.buildServer(uri);
		}

		@Override
		public Collection<URI> getURIs() {
			return List.of(uri);
		}

		@Override
		public ServerBuilder<BufferedImage> updateURIs(Map<URI, URI> updateMap) {
			return new Builder(updateMap.getOrDefault(uri, uri));
		}
	}

	/** Shows the first channel as grey: only there so that a banded raster can live in a BufferedImage. */
	private static final class ChannelsColorModel extends ColorModel {

		ChannelsColorModel(int bits, int transferType) {
			super(bits, new int[] {bits}, ColorSpace.getInstance(ColorSpace.CS_GRAY), false, false, OPAQUE, transferType);
		}

		@Override public boolean isCompatibleRaster(Raster raster) { return true; }
		@Override public int getRed(int pixel) { return pixel & 0xff; }
		@Override public int getGreen(int pixel) { return pixel & 0xff; }
		@Override public int getBlue(int pixel) { return pixel & 0xff; }
		@Override public int getAlpha(int pixel) { return 255; }
	}
}
