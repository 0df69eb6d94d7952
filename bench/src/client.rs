//! One keep-alive HTTP/1.1 client connection, as both publishers use it:
//! write a ready-made request, read the whole response (framed by
//! `Content-Length`, chunked coding, or the end of the connection), and keep
//! the connection for the next request unless the server said to close.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sse::{ChunkDecoder, parse_head};
use crate::target::Target;

/// How long one request may take, connect included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// On the wire: connect, write, read or framing.
    Io(String),
    /// No whole answer within [`REQUEST_TIMEOUT`].
    TimedOut,
}

impl Failure {
    /// The message a report shows.
    pub fn message(self) -> String {
        match self {
            Self::Io(e) => e,
            Self::TimedOut => "request timed out".into(),
        }
    }
}

/// [`send`] within [`REQUEST_TIMEOUT`], as both publishers use it: returns
/// the status; the connection is kept for the next request only when it
/// can carry one (dropped after a failure or `Connection: close`).
pub async fn request(
    target: &Target,
    conn: &mut Option<TcpStream>,
    req: &[u8],
    buf: &mut [u8],
) -> Result<u16, Failure> {
    let (result, keep) =
        match tokio::time::timeout(REQUEST_TIMEOUT, send(target, conn, req, buf)).await {
            Ok(Ok((status, close))) => (Ok(status), !close),
            Ok(Err(e)) => (Err(Failure::Io(e)), false),
            Err(_) => (Err(Failure::TimedOut), false),
        };
    if !keep {
        *conn = None;
    }
    result
}

/// Sends one request on the keep-alive connection (opening it if needed) and
/// reads the whole response; returns the status and whether the connection
/// must be closed. `buf` must hold the largest response head expected.
pub async fn send(
    target: &Target,
    conn: &mut Option<TcpStream>,
    req: &[u8],
    buf: &mut [u8],
) -> Result<(u16, bool), String> {
    if conn.is_none() {
        *conn = Some(
            target
                .connect(None)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
    }
    let stream = conn.as_mut().ok_or("no connection")?;
    stream
        .write_all(req)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut filled = 0;
    let (head, head_len) = loop {
        if filled == buf.len() {
            return Err("response head too large".into());
        }
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("server closed the connection".into());
        }
        filled += n;
        if let Some(h) = parse_head(&buf[..filled]).map_err(String::from)? {
            break h;
        }
    };
    // Read the body to its end so the connection can carry the next request.
    if head.chunked {
        let mut dec = ChunkDecoder::default();
        let mut done = dec
            .feed(&buf[head_len..filled], &mut |_| {})
            .map_err(|e| e.to_string())?;
        while !done {
            let n = stream.read(buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("server closed mid-response".into());
            }
            done = dec
                .feed(&buf[..n], &mut |_| {})
                .map_err(|e| e.to_string())?;
        }
        Ok((head.status, head.close))
    } else if let Some(len) = head.content_length {
        let mut have = (filled - head_len) as u64;
        while have < len {
            let n = stream.read(buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("server closed mid-response".into());
            }
            have += n as u64;
        }
        Ok((head.status, head.close))
    } else if head.status == 204 || head.status == 304 || head.status < 200 {
        // No body by definition.
        Ok((head.status, head.close))
    } else {
        // No framing: the body runs to the end of the connection.
        Ok((head.status, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request on one connection with the next
    /// canned response, written in two pieces.
    async fn canned(responses: Vec<&'static [u8]>) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            for r in responses {
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let (a, b) = r.split_at(r.len() / 2);
                s.write_all(a).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                s.write_all(b).await.unwrap();
            }
        });
        Target::parse(&format!("http://{addr}")).unwrap()
    }

    #[tokio::test]
    async fn keep_alive_over_every_framing() {
        let target = canned(vec![
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 20\r\n\r\n{\"id\":\"1795824-42\"}\n",
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let mut conn = None;
        let mut buf = vec![0u8; 512];
        let req = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n";
        for want in [(202, false), (201, false), (429, false), (200, true)] {
            let got = send(&target, &mut conn, req, &mut buf).await.unwrap();
            assert_eq!(got, want);
        }
        // The same connection carried all four.
        assert!(conn.is_some());
    }
}
