package qupath.lib.projects;

import java.io.IOException;
import java.nio.file.Path;

import qupath.lib.images.ImageData;
import qupath.lib.images.servers.ImageServerBuilder.ServerBuilder;
import qupath.lib.io.UriResource;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;

/** QuPath's project entry, reduced to what the bridge calls. */
public interface ProjectImageEntry<T> extends UriResource {

	String getID();

	void setImageName(String name);

	String getImageName();

	String getOriginalImageName();

	Path getEntryPath();

	ServerBuilder<T> getServerBuilder();

	ImageData<T> readImageData() throws IOException;

	void saveImageData(ImageData<T> imageData) throws IOException;

	PathObjectHierarchy readHierarchy() throws IOException;

	boolean hasImageData();

	String getSummary();
}
