//! A fake model server on `127.0.0.1:0` that answers from a script, byte for byte as real
//! servers do, and can misbehave the way networks do (refuse, reset mid-body, stall).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answers with this status, these headers and this body.
    Answer {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Sends the headers and part of the body, then resets the connection.
    ResetMidBody,
    /// Reads the request and never answers.
    Stall,
    /// Reads the request and closes the connection without a word.
    Close,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply::Answer {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.into(),
        }
    }

    /// The same answer with one more header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        if let Reply::Answer { headers, .. } = &mut self {
            headers.push((name, value.into()));
        }
        self
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The fake server. Replies are taken in order; the last one is repeated.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Reply>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Upstream {
    /// Starts serving `replies`.
    pub async fn start(replies: impl IntoIterator<Item = Reply>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream {
            addr: listener.local_addr().unwrap(),
            script: Arc::new(Mutex::new(replies.into_iter().collect())),
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let server = upstream.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(server.clone().connection(stream));
            }
        });
        upstream
    }

    /// The base URL, as an OpenAI SDK takes it.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Replaces the script.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        *self.script.lock().unwrap() = replies.into_iter().collect();
    }

    /// The requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many requests came.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn next_reply(&self) -> Reply {
        let mut script = self.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script.front().cloned().unwrap_or(Reply::Close)
        }
    }

    async fn connection(self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let Some(request) = read_request(&mut stream, &mut buf).await else {
                return;
            };
            self.received.lock().unwrap().push(request);
            match self.next_reply() {
                Reply::Answer {
                    status,
                    headers,
                    body,
                } => {
                    let mut head =
                        format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
                    for (name, value) in headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str("\r\n");
                    let sent = stream.write_all(head.as_bytes()).await.is_ok()
                        && stream.write_all(body.as_bytes()).await.is_ok();
                    if !sent {
                        return;
                    }
                }
                Reply::ResetMidBody => {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"id\":\"cmpl-1\",";
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.flush().await;
                    let _ = stream.set_zero_linger();
                    return;
                }
                Reply::Stall => {
                    std::future::pending::<()>().await;
                }
                Reply::Close => return,
            }
        }
    }
}

/// An address nothing listens on: connecting to it is refused.
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Reads one HTTP/1.1 request (headers and a `content-length` body).
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
    buf.drain(..head_end + length);
    Some(Received {
        method,
        path,
        headers,
        body,
    })
}
