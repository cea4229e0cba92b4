package com.acme.qa;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import org.junit.jupiter.api.Test;

/** Acceptance tests of the deployed com.acme:app, at the URL in the system property app.url. */
class AppTest {
    private static final HttpClient CLIENT =
            HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();

    static HttpResponse<String> get(URI uri) throws Exception {
        HttpResponse<String> response = CLIENT.send(
                HttpRequest.newBuilder(uri).timeout(Duration.ofSeconds(20)).build(),
                HttpResponse.BodyHandlers.ofString());
        System.out.println("GET " + uri + " -> " + response.statusCode());
        return response;
    }

    static URI app(String path) {
        String base = System.getProperty("app.url", "");
        if (base.isEmpty()) {
            throw new IllegalStateException("set -Dapp.url to the deployed app's URL");
        }
        return URI.create(base.replaceAll("/+$", "") + path);
    }

    @Test
    void greets() throws Exception {
        HttpResponse<String> response = get(app("/"));
        assertEquals(200, response.statusCode());
        assertTrue(response.body().startsWith("Hello from app"), response.body());
    }

    @Test
    void reportsItsVersionAndPath() throws Exception {
        String body = get(app("/")).body().trim();
        assertTrue(body.contains("1.4.2"), body);
        assertTrue(body.endsWith(" at " + app("").getPath()), body);
    }
}
