//! The endpoint's answers, and the HTTP layer up to the point where the cluster is asked.

use super::*;

#[test]
fn refusals_have_their_documented_codes_and_results() {
    let cases = [
        (Outcome::Unauthorized("x".into()), 401, "unauthorized"),
        (Outcome::TooLarge, 413, "too_large"),
        (Outcome::Malformed("x".into()), 400, "malformed"),
        (Outcome::NoMatch("x".into()), 202, "no_match"),
        (
            Outcome::Created {
                runs: vec!["a".into()],
            },
            201,
            "created",
        ),
        (
            Outcome::Duplicate {
                runs: vec!["a".into()],
            },
            200,
            "duplicate",
        ),
    ];
    for (outcome, code, result) in cases {
        assert_eq!(outcome.status().as_u16(), code, "{outcome:?}");
        assert_eq!(outcome.result(), result);
        assert_eq!(outcome.body()["result"], result);
    }
    // Every answer a provider's endpoint gives has its counter made at 0 up front.
    for outcome in [
        Outcome::Unauthorized("x".into()),
        Outcome::TooLarge,
        Outcome::Malformed("x".into()),
        Outcome::NoMatch("x".into()),
        Outcome::Created { runs: vec![] },
        Outcome::Duplicate { runs: vec![] },
        Outcome::Pong,
        Outcome::Ignored("x".into()),
        Outcome::Error("x".into()),
    ] {
        assert!(
            Outcome::PROVIDER_RESULTS.contains(&outcome.result()),
            "{outcome:?}"
        );
    }
    assert_eq!(
        Outcome::Duplicate {
            runs: vec!["r".into()]
        }
        .body()["runs"][0],
        "r"
    );
}

/// The HTTP layer, up to the point where the cluster would be asked: answers, size
/// limit (declared and streamed), and the metric of each result.
#[tokio::test]
async fn answers_before_the_cluster_is_asked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    crate::tls::install_crypto_provider();
    // A client for an address where nothing listens: these requests never reach it.
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let metrics = Metrics::new().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // One composition with a trigger for https://h/known.git; its secret would be read
    // from the cluster, which is not there (so nothing verifies against it).
    let (compositions, mut writer) = kube::runtime::reflector::store();
    let composition: Composition = serde_json::from_value(serde_json::json!({
        "apiVersion": "maestro.dev/v1alpha1", "kind": "Composition",
        "metadata": {"name": "known", "namespace": "team"},
        "spec": {"steps": [{"name": "s", "task": "shell", "with": {"script": "true"}}],
                 "triggers": {"git": [{"repository": "https://h/known.git",
                                       "secretRef": {"name": "hook"}}]}}
    }))
    .unwrap();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::InitApply(DeserializeGuard(
        Ok(composition),
    )));
    writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
    let webhook = Webhook::new(client, compositions, metrics.clone());
    tokio::spawn(serve_on(listener, webhook));
    let send = |head: String, body: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        // The endpoint may answer and close before the whole body is sent.
        let _ = s.write_all(&body).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let post = |path: &str, headers: &str, body: &str| {
        send(
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
                body.len()
            ),
            body.as_bytes().to_vec(),
        )
    };
    let status = |answer: &str| answer.split_whitespace().nth(1).unwrap_or("").to_string();

    let health = send(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        vec![],
    )
    .await;
    assert_eq!(status(&health), "200");
    assert_eq!(status(&post("/hooks/svn", "", "{}").await), "404");
    let get = send(
        "GET /hooks/github HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        vec![],
    )
    .await;
    assert_eq!(status(&get), "405");
    let declared = send(
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-GitHub-Event: push\r\nContent-Length: 2000000\r\n\r\n".into(),
        vec![],
    )
    .await;
    assert_eq!(status(&declared), "413", "{declared}");
    // Chunked: no length declared, refused once 1 MiB has been read.
    let mut chunked = format!("{:x}\r\n", MAX_BODY_BYTES + 10).into_bytes();
    chunked.extend(vec![b'x'; MAX_BODY_BYTES + 10]);
    chunked.extend(b"\r\n0\r\n\r\n");
    let streamed = send(
        "POST /hooks/gitea HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Gitea-Event: push\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
        chunked,
    )
    .await;
    assert_eq!(status(&streamed), "413", "{streamed}");
    // Signed (the signature is checked after parsing, against the parsed repository).
    let malformed = post(
        "/hooks/github",
        "X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=00\r\n",
        "{\"ref\": ",
    )
    .await;
    assert_eq!(status(&malformed), "400");
    assert!(malformed.contains("malformed push payload"), "{malformed}");
    assert_eq!(
        status(&post("/hooks/github", "", "{}").await),
        "400",
        "no event header"
    );
    assert_eq!(
        status(&post("/hooks/github", "X-GitHub-Event: ping\r\n", "{}").await),
        "200"
    );
    let other = post("/hooks/gitlab", "X-Gitlab-Event: Issue Hook\r\n", "{}").await;
    assert_eq!(status(&other), "202");
    assert!(other.contains("only pushes start runs"), "{other}");
    // Unsigned or unverified, a push gets the same answer whether or not a composition
    // has a trigger for its repository, and even a deletion is checked first.
    let push_to = |repo: &str| {
        format!(
            r#"{{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000","deleted":true,"repository":{{"clone_url":"https://h/{repo}.git"}}}}"#
        )
    };
    let signed = "X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=00\r\n";
    let body_of = |answer: &str| answer.rsplit("\r\n\r\n").next().unwrap_or("").to_string();
    let unsigned_known = post(
        "/hooks/github",
        "X-GitHub-Event: push\r\n",
        &push_to("known"),
    )
    .await;
    let unsigned_unknown = post(
        "/hooks/github",
        "X-GitHub-Event: push\r\n",
        &push_to("other"),
    )
    .await;
    assert_eq!(status(&unsigned_known), "401", "{unsigned_known}");
    assert!(
        unsigned_known.contains("missing signature"),
        "{unsigned_known}"
    );
    assert_eq!(body_of(&unsigned_known), body_of(&unsigned_unknown));
    let forged_known = post("/hooks/github", signed, &push_to("known")).await;
    let forged_unknown = post("/hooks/github", signed, &push_to("other")).await;
    assert_eq!(status(&forged_known), "401", "{forged_known}");
    assert!(forged_known.contains(UNVERIFIED), "{forged_known}");
    assert_eq!(body_of(&forged_known), body_of(&forged_unknown));

    let text = metrics.render();
    for (provider, result, n) in [
        ("github", "too_large", 1),
        ("gitea", "too_large", 1),
        ("github", "malformed", 2),
        ("github", "ping", 1),
        ("gitlab", "ignored", 1),
        ("github", "unauthorized", 4),
        ("none", "not_found", 1),
        ("github", "method_not_allowed", 1),
    ] {
        let line = format!(
            "maestro_webhook_deliveries_total{{provider=\"{provider}\",result=\"{result}\"}} {n}"
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}

/// Bodies in memory are capped apart from connections: while senders trickle bodies into
/// every permit, another delivery is told to retry (503) instead of adding a body, and is
/// served once a permit is free again.
#[tokio::test]
async fn trickled_bodies_hold_permits_not_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    crate::tls::install_crypto_provider();
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let (compositions, mut writer) = kube::runtime::reflector::store();
    writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut webhook = Webhook::new(client, compositions, Metrics::new().unwrap());
    webhook.bodies = Arc::new(Semaphore::new(1));
    webhook.body_wait = std::time::Duration::from_millis(200);
    tokio::spawn(serve_on(listener, webhook));
    let ping = || async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-GitHub-Event: ping\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    // Headers and a promise of 100 bytes, none of which come: it holds the only permit.
    let mut trickler = tokio::net::TcpStream::connect(addr).await.unwrap();
    trickler
        .write_all(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let refused = ping().await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("retry later"), "{refused}");
    // The sender gives up: its permit is free, and the next delivery is served.
    drop(trickler);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let served = ping().await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}

#[test]
fn delivery_ids_become_valid_label_values() {
    assert_eq!(
        label_value("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    );
    assert_eq!(label_value("-a b/c_"), "abc");
    assert!(label_value(&"x".repeat(100)).len() <= 63);
}
