//! What the publish-rate run sends: the endpoint (a URL template with
//! `{channel}`), the body (Herald's JSON or a raw body, for Nchan's
//! publisher), and the whole request, built once per connection and resent
//! as is, so that building requests costs the bench nothing per publish.

use crate::target::Target;

/// How the event goes into the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyKind {
    /// Herald's JSON: `{"data":"…"}`, or `{"events":[{"data":"…"},…]}` for a batch.
    Herald,
    /// The event bytes as the whole body (`text/plain`), as Nchan's publisher takes them.
    Raw,
}

/// Where publishes go: a loopback server and a path (with query) in which
/// `{channel}` is replaced by the channel name.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The server (loopback only).
    pub target: Target,
    /// Path and query, `{channel}` not yet replaced.
    pub path_template: String,
}

/// The placeholder replaced by the channel name.
pub const CHANNEL: &str = "{channel}";

impl Endpoint {
    /// Parses `http://HOST[:PORT]/path?query` with `{channel}` somewhere in
    /// the path or query; the host must be loopback, as for every run.
    pub fn parse(template: &str) -> anyhow::Result<Endpoint> {
        let target = Target::parse(template)?;
        let rest = template
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("--publish-url must start with http://"))?;
        let path = rest.find('/').map_or("/", |i| &rest[i..]);
        let path = path.split('#').next().unwrap_or("/");
        if path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            anyhow::bail!("--publish-url must not contain spaces or control characters");
        }
        Ok(Endpoint {
            target,
            path_template: path.to_string(),
        })
    }

    /// Herald's publish endpoint under the base URL `url`: the single-event
    /// one, or the batch one when `batch > 1`.
    pub fn herald(url: &str, batch: usize) -> anyhow::Result<Endpoint> {
        let base = url.split(['?', '#']).next().unwrap_or(url);
        let suffix = if batch > 1 { "/batch" } else { "" };
        Endpoint::parse(&format!(
            "{}/channels/{CHANNEL}/events{suffix}",
            base.trim_end_matches('/')
        ))
    }

    /// The request target for `channel`.
    pub fn path_for(&self, channel: &str) -> String {
        self.path_template.replace(CHANNEL, channel)
    }

    /// The template as a URL, for the report.
    pub fn display(&self) -> String {
        format!("http://{}{}", self.target.host, self.path_template)
    }
}

/// The request body for `batch` events of `payload` bytes each. Event data
/// is `x` repeated, so that it needs no JSON escaping and is the same size on
/// the wire for every server.
pub fn body(kind: BodyKind, batch: usize, payload: usize) -> anyhow::Result<Vec<u8>> {
    let data = "x".repeat(payload);
    match (kind, batch) {
        (BodyKind::Raw, 1) => Ok(data.into_bytes()),
        (BodyKind::Raw, _) => {
            anyhow::bail!("--body raw sends one event per request: use --batch 1")
        }
        (BodyKind::Herald, 1) => Ok(format!("{{\"data\":\"{data}\"}}").into_bytes()),
        (BodyKind::Herald, n) => {
            let event = format!("{{\"data\":\"{data}\"}}");
            let mut out = String::with_capacity(12 + n * (event.len() + 1));
            out.push_str("{\"events\":[");
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&event);
            }
            out.push_str("]}");
            Ok(out.into_bytes())
        }
    }
}

/// The whole keep-alive `POST` for `channel`, head and body.
pub fn build(
    endpoint: &Endpoint,
    channel: &str,
    kind: BodyKind,
    body: &[u8],
    token: Option<&str>,
) -> Vec<u8> {
    let content_type = match kind {
        BodyKind::Herald => "application/json",
        BodyKind::Raw => "text/plain",
    };
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        endpoint.path_for(channel),
        endpoint.target.host,
        body.len()
    );
    if let Some(t) = token {
        head.push_str("Authorization: Bearer ");
        head.push_str(t);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_request(req: &[u8]) -> (String, String, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(n) = r.parse(req).unwrap() else {
            panic!("incomplete request head");
        };
        let hs = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (
            r.method.unwrap().to_string(),
            r.path.unwrap().to_string(),
            hs,
            req[n..].to_vec(),
        )
    }

    fn header<'a>(hs: &'a [(String, String)], name: &str) -> &'a str {
        &hs.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn herald_single_event() {
        let ep = Endpoint::herald("http://127.0.0.1:18000/", 1).unwrap();
        assert_eq!(
            ep.display(),
            "http://127.0.0.1:18000/channels/{channel}/events"
        );
        let b = body(BodyKind::Herald, 1, 100).unwrap();
        let req = build(&ep, "bench-1-0", BodyKind::Herald, &b, Some("tok.en"));
        let (method, path, hs, got) = parse_request(&req);
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/channels/bench-1-0/events")
        );
        assert_eq!(header(&hs, "host"), "127.0.0.1:18000");
        assert_eq!(header(&hs, "content-type"), "application/json");
        assert_eq!(header(&hs, "authorization"), "Bearer tok.en");
        assert_eq!(header(&hs, "content-length"), got.len().to_string());
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["data"].as_str().unwrap().len(), 100);
    }

    #[test]
    fn herald_batch() {
        let ep = Endpoint::herald("http://localhost:9000/prefix", 3).unwrap();
        let b = body(BodyKind::Herald, 3, 10).unwrap();
        let req = build(&ep, "c", BodyKind::Herald, &b, None);
        let (_, path, hs, got) = parse_request(&req);
        assert_eq!(path, "/prefix/channels/c/events/batch");
        assert!(hs.iter().all(|(n, _)| n != "authorization"));
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        let events = v["events"].as_array().unwrap();
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| e["data"] == "x".repeat(10)));
    }

    #[test]
    fn nchan_raw_body() {
        let ep = Endpoint::parse("http://127.0.0.1:18080/pub?id={channel}").unwrap();
        let b = body(BodyKind::Raw, 1, 100).unwrap();
        let req = build(&ep, "bench-7-1", BodyKind::Raw, &b, None);
        let (_, path, hs, got) = parse_request(&req);
        assert_eq!(path, "/pub?id=bench-7-1");
        assert_eq!(header(&hs, "content-type"), "text/plain");
        assert_eq!(got, vec![b'x'; 100]);
        assert!(body(BodyKind::Raw, 2, 100).is_err());
    }

    #[test]
    fn publish_url_is_loopback_only() {
        assert!(Endpoint::parse("http://10.1.2.3/pub?id={channel}").is_err());
        assert!(Endpoint::parse("https://127.0.0.1/pub").is_err());
        assert!(Endpoint::parse("http://127.0.0.1/p ub").is_err());
        let ep = Endpoint::parse("http://[::1]:81").unwrap();
        assert_eq!(ep.path_for("c"), "/");
    }
}
