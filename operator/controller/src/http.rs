//! The operator's HTTP servers (metrics and health, the push webhook) on hyper: one accept
//! loop and one response builder, so neither endpoint parses HTTP by hand.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

/// At most this many connections are served at once per server; more are closed as soon as
/// they are accepted, so a flood of idle connections cannot exhaust memory or descriptors.
pub const MAX_CONNECTIONS: usize = 256;
/// A client has this long to send a request's headers (from the connection's start, and
/// between requests on a kept-alive one), so slow or idle connections free their slot.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the accept loop pauses after an accept error (out of file descriptors...),
/// instead of ending the server.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A complete response: the endpoints answer with small bodies held in memory.
pub type HttpResponse = Response<Full<Bytes>>;

/// Serves HTTP/1.1 on `listener` until the process ends, each connection on a task of its
/// own, answering every request with `answer`. `server` names it in logs. Connections are
/// capped at [`MAX_CONNECTIONS`] and must send their headers within
/// [`HEADER_READ_TIMEOUT`]; accept errors are logged and retried, never fatal.
pub async fn serve<Answer, Answered>(
    listener: TcpListener,
    server: &'static str,
    answer: Answer,
) -> std::io::Result<()>
where
    Answer: Fn(Request<Incoming>) -> Answered + Clone + Send + Sync + 'static,
    Answered: Future<Output = HttpResponse> + Send + 'static,
{
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, server, "cannot accept a connection; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            tracing::debug!(%peer, server, "connection closed: {MAX_CONNECTIONS} are open");
            drop(stream);
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            // Held until the connection ends.
            let _slot = slot;
            let service = service_fn(move |request| {
                let answered = answer(request);
                async move { Ok::<_, Infallible>(answered.await) }
            });
            if let Err(error) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, server, "HTTP connection ended with an error");
            }
        });
    }
}

/// A response with `status`, a `Content-Type` and `body`.
pub fn respond(status: StatusCode, content_type: &str, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    async fn hello_server() -> std::io::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        tokio::spawn(serve(listener, "test", |_request| async {
            respond(StatusCode::OK, "text/plain", "hello\n".into())
        }));
        Ok(addr)
    }

    async fn get(addr: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    /// A flood of idle connections fills the cap; the server closes what is over it and
    /// still answers once the idle ones time out, and never stops accepting.
    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed_and_the_server_keeps_answering()
    -> std::io::Result<()> {
        let addr = hello_server().await?;
        assert!(get(&addr).await?.starts_with("HTTP/1.1 200"));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(&addr).await?);
        }
        // Over the cap: accepted, then closed at once (EOF, no answer).
        let mut extra = TcpStream::connect(&addr).await?;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        // The idle ones are closed after the header timeout, and the server answers again.
        let started = Instant::now();
        let answer = loop {
            match get(&addr).await {
                Ok(answer) if answer.starts_with("HTTP/1.1 200") => break answer,
                _ if started.elapsed() > HEADER_READ_TIMEOUT * 3 => break String::new(),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        assert!(
            answer.contains("hello"),
            "no answer after the idle connections timed out"
        );
        let mut closed = 0;
        for mut stream in idle {
            if matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {
                closed += 1;
            }
        }
        assert_eq!(closed, MAX_CONNECTIONS, "idle connections left open");
        Ok(())
    }
}
