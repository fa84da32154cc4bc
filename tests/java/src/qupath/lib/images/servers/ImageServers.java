package qupath.lib.images.servers;

import java.awt.image.BufferedImage;
import java.io.IOException;
import java.net.URI;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;

/** QuPath's entry point for opening an image: here every image is a TIFF read by the stand-in server. */
public class ImageServers {

	private ImageServers() {}

	public static ImageServer<BufferedImage> buildServer(String path, String... args) throws IOException {
		URI uri;
		if (path.startsWith("file:"))
			uri = URI.create(path);
		else
			uri = Paths.get(path).toAbsolutePath().toUri();
		return buildServer(uri, args);
	}

	public static ImageServer<BufferedImage> buildServer(URI uri, String... args) throws IOException {
		Path file = Paths.get(uri);
		if (!Files.exists(file))
			throw new IOException("Unable to build ImageServer for " + uri + ": file not found");
		return new StandInTiffServer(uri);
	}
}
