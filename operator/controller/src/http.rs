//! The operator's HTTP servers (metrics and health, the push webhook) on hyper: one accept
//! loop and one response builder, so neither endpoint parses HTTP by hand.

use std::{convert::Infallible, future::Future};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A complete response: the endpoints answer with small bodies held in memory.
pub type HttpResponse = Response<Full<Bytes>>;

/// Serves HTTP/1.1 on `listener` until the process ends, each connection on a task of its
/// own, answering every request with `answer`. `server` names it in connection errors.
pub async fn serve<Answer, Answered>(
    listener: TcpListener,
    server: &'static str,
    answer: Answer,
) -> std::io::Result<()>
where
    Answer: Fn(Request<Incoming>) -> Answered + Clone + Send + Sync + 'static,
    Answered: Future<Output = HttpResponse> + Send + 'static,
{
    loop {
        let (stream, peer) = listener.accept().await?;
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let answered = answer(request);
                async move { Ok::<_, Infallible>(answered.await) }
            });
            if let Err(error) = http1::Builder::new()
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
