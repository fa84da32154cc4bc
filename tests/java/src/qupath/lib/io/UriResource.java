package qupath.lib.io;

import java.io.IOException;
import java.net.URI;
import java.util.Collection;
import java.util.Map;

/** Something backed by URIs (images, project entries), as in QuPath. */
public interface UriResource {

	Collection<URI> getURIs() throws IOException;

	boolean updateURIs(Map<URI, URI> replacements) throws IOException;
}
