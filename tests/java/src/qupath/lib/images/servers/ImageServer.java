package qupath.lib.images.servers;

import java.io.IOException;
import java.net.URI;
import java.util.Collection;

import qupath.lib.images.servers.ImageServerBuilder.ServerBuilder;
import qupath.lib.regions.RegionRequest;

/** QuPath's ImageServer: the methods the bridge calls, with QuPath's signatures. */
public interface ImageServer<T> extends AutoCloseable {

	String getPath();

	Collection<URI> getURIs();

	double[] getPreferredDownsamples();

	int nResolutions();

	double getDownsampleForResolution(int level);

	int getWidth();

	int getHeight();

	int nChannels();

	boolean isRGB();

	int nZSlices();

	int nTimepoints();

	T readRegion(RegionRequest request) throws IOException;

	T readRegion(double downsample, int x, int y, int width, int height) throws IOException;

	PixelType getPixelType();

	ImageChannel getChannel(int channel);

	ImageServerMetadata getMetadata();

	PixelCalibration getPixelCalibration();

	Class<T> getImageClass();

	ServerBuilder<T> getBuilder();
}
