//! rustls_tls: a TLS client and server on rustls 0.20 (Debian's librust-rustls-dev), one
//! exchange each, built by test/kernel/rustls.test.ts:
//!   rustls_tls server PORT CERT.der KEY.der FILE  accepts connections on 127.0.0.1:PORT until
//!                                  one brings a whole HTTP/1.0 request (with its Content-Length body),
//!                                  answers 200 with FILE as the body, sends close_notify, exits
//!   rustls_tls client PORT CERT.der  connects to 127.0.0.1:PORT, trusts exactly CERT.der (the
//!                                  test's self-signed certificate), sends its standard input
//!                                  with one write_all (by default), copies what it reads until the close
//!                                  to standard output; with `moved`, the handshake is done
//!                                  first and the connection then moved to the heap; with a
//!                                  number CHUNK, the input goes in writes of CHUNK bytes
//!                                  (bench/rustls-probes.sh: the probes' cost per call)
//! The I/O goes through rustls::Stream (Writer::write, complete_io, Reader::read), as in the
//! rustls examples. Exit code 0 only if every step worked.
use std::convert::TryFrom;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::{env, fs, process};

#[path = "pinned.rs"]
mod pinned;
use pinned::Pinned;
use rustls::{Certificate, ClientConfig, ClientConnection, PrivateKey, ServerConfig, ServerConnection, ServerName, Stream};

fn die(what: &str) -> ! {
    eprintln!("rustls_tls: {}", what);
    process::exit(1)
}

fn read_file(path: &str) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| die(&format!("cannot read {}: {}", path, e)))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn server(port: &str, cert: &str, key: &str, file: &str) {
    let config = ServerConfig::builder()
        .with_safe_defaults()
        .with_no_client_auth()
        .with_single_cert(vec![Certificate(read_file(cert))], PrivateKey(read_file(key)))
        .unwrap_or_else(|e| die(&format!("cannot use the certificate: {}", e)));
    let body = read_file(file);
    let config = Arc::new(config);
    let listener = TcpListener::bind(format!("127.0.0.1:{}", port)).unwrap_or_else(|e| die(&format!("cannot listen: {}", e)));
    // A connection that ends before its request is whole (the test's check that the port is
    // open) is dropped, and the next one accepted.
    loop {
        let (mut sock, _) = listener.accept().unwrap_or_else(|e| die(&format!("accept: {}", e)));
        let mut conn = ServerConnection::new(config.clone()).unwrap_or_else(|e| die(&format!("connection: {}", e)));
        let mut tls = Stream::new(&mut conn, &mut sock);
        if let Some(_request) = read_request(&mut tls) {
            let mut response = format!("HTTP/1.0 200 ok\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            response.extend_from_slice(&body);
            tls.write_all(&response).unwrap_or_else(|e| die(&format!("write: {}", e)));
            tls.conn.send_close_notify();
            tls.flush().unwrap_or_else(|e| die(&format!("flush: {}", e)));
            return;
        }
    }
}

/// An HTTP/1.0 request with its Content-Length body, or None if the peer went away before.
fn read_request<R: Read>(tls: &mut R) -> Option<Vec<u8>> {
    let mut req = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = find(&req, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
            let want = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if req.len() >= end + 4 + want {
                return Some(req);
            }
        }
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
}

fn client(port: &str, cert: &str, moved: bool, chunk: usize) {
    let config = ClientConfig::builder()
        .with_safe_defaults()
        .with_custom_certificate_verifier(Arc::new(Pinned(read_file(cert))))
        .with_no_client_auth();
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).unwrap_or_else(|e| die(&format!("stdin: {}", e)));
    let mut sock = TcpStream::connect(format!("127.0.0.1:{}", port)).unwrap_or_else(|e| die(&format!("connect: {}", e)));
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(Arc::new(config), name).unwrap_or_else(|e| die(&format!("connection: {}", e)));
    let mut boxed;
    let conn = if moved {
        // As async wrappers do (tokio-rustls hands the stream back by value after the
        // handshake): the handshake here, then the connection moves to the heap.
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap_or_else(|e| die(&format!("handshake: {}", e)));
        }
        boxed = Box::new(conn);
        &mut *boxed
    } else {
        &mut conn
    };
    let mut tls = Stream::new(conn, &mut sock);
    for part in input.chunks(chunk.max(1)) {
        tls.write_all(part).unwrap_or_else(|e| die(&format!("write: {}", e)));
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // nginx closes without close_notify after an HTTP/1.0 response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => die(&format!("read: {}", e)),
        }
    }
    std::io::stdout().write_all(&out).unwrap_or_else(|e| die(&format!("stdout: {}", e)));
}

fn main() {
    let args: Vec<String> = env::args().collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [_, "server", port, cert, key, file] => server(port, cert, key, file),
        [_, "client", port, cert] => client(port, cert, false, usize::MAX),
        [_, "client", port, cert, "moved"] => client(port, cert, true, usize::MAX),
        [_, "client", port, cert, n] if n.parse::<usize>().is_ok() => client(port, cert, false, n.parse().unwrap()),
        _ => die("usage: rustls_tls server PORT CERT.der KEY.der FILE | rustls_tls client PORT CERT.der [moved | CHUNK]"),
    }
}
