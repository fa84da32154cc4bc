package qupath.lib.images.servers;

import java.net.URI;
import java.util.Collection;
import java.util.Map;

/** QuPath's builder interfaces: a ServerBuilder is what a project stores to reopen an image. */
public interface ImageServerBuilder<T> {

	interface ServerBuilder<T> {

		ImageServer<T> build() throws Exception;

		Collection<URI> getURIs();

		ServerBuilder<T> updateURIs(Map<URI, URI> updateMap);
	}
}
