package qupath.lib.objects;

/** The root of a hierarchy. */
public class PathRootObject extends PathObject {

	private static final long serialVersionUID = 1L;

	public PathRootObject() {
		super(null, null, null);
	}

	@Override
	public boolean isRootObject() { return true; }
}
