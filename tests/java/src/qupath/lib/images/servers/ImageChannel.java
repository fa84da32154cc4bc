package qupath.lib.images.servers;

/** A named channel with a display colour (packed RGB), as in QuPath. */
public class ImageChannel {

	private final String name;
	private final Integer color;

	private ImageChannel(String name, Integer color) {
		this.name = name;
		this.color = color;
	}

	public static ImageChannel getInstance(String name, Integer color) {
		return new ImageChannel(name, color);
	}

	public String getName() { return name; }
	public Integer getColor() { return color; }
}
