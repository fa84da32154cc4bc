package qupath.lib.images;

import qupath.lib.images.servers.ImageServer;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;

/** An image with its objects, as in QuPath. */
public class ImageData<T> {

	/** Image types, as in QuPath. */
	public enum ImageType {
		BRIGHTFIELD_H_E, BRIGHTFIELD_H_DAB, BRIGHTFIELD_OTHER, FLUORESCENCE, OTHER, UNSET
	}

	private final ImageServer<T> server;
	private final PathObjectHierarchy hierarchy;
	private ImageType type;

	public ImageData(ImageServer<T> server) {
		this(server, new PathObjectHierarchy(), ImageType.UNSET);
	}

	public ImageData(ImageServer<T> server, PathObjectHierarchy hierarchy, ImageType type) {
		this.server = server;
		this.hierarchy = hierarchy == null ? new PathObjectHierarchy() : hierarchy;
		this.type = type == null ? ImageType.UNSET : type;
	}

	public ImageServer<T> getServer() { return server; }
	public String getServerPath() { return server == null ? null : server.getPath(); }
	public PathObjectHierarchy getHierarchy() { return hierarchy; }
	public ImageType getImageType() { return type; }
	public void setImageType(ImageType type) { this.type = type; }
}
