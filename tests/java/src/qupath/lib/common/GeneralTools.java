package qupath.lib.common;

/** Stand-in for QuPath's GeneralTools: only the version query. */
public final class GeneralTools {

	public static final String STANDIN_VERSION = "0.6.0";

	private GeneralTools() {}

	/** The QuPath version this stand-in follows (its API is the 0.6 one). */
	public static String getVersion() {
		return STANDIN_VERSION;
	}
}
