package qupath.lib.projects;

import java.io.IOException;
import java.net.URI;
import java.nio.file.Path;
import java.util.Collection;
import java.util.List;

import qupath.lib.images.ImageData;
import qupath.lib.images.servers.ImageServerBuilder.ServerBuilder;
import qupath.lib.objects.classes.PathClass;

/** QuPath's project interface, reduced to what the bridge calls. */
public interface Project<T> {

	List<PathClass> getPathClasses();

	boolean setPathClasses(Collection<? extends PathClass> pathClasses);

	URI getURI();

	String getVersion();

	Path getPath();

	boolean isEmpty();

	ProjectImageEntry<T> addImage(ServerBuilder<T> server) throws IOException;

	ProjectImageEntry<T> getEntry(ImageData<T> imageData);

	void syncChanges() throws IOException;

	List<ProjectImageEntry<T>> getImageList();

	String getName();
}
