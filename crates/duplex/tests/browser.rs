//! The page on the web listener: served from the binary, then driven in a real browser.

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;

use common::{STEP, repo_root, spawn_duplex_serve_web};

/// `GET path` on a fresh HTTP/1.1 connection to `web`: the whole reply as text.
fn http_get(web: SocketAddr, path: &str) -> String {
    let mut tcp = std::net::TcpStream::connect(web).expect("connect");
    tcp.set_read_timeout(Some(STEP)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn the_page_and_its_assets_are_served_from_the_binary_with_a_strict_content_policy() {
    let (_server, _grpc, web) = spawn_duplex_serve_web(&[]);
    let page = http_get(web, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("content-type: text/html; charset=utf-8"),
        "{page}"
    );
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    assert!(
        page.contains(r#"<script type="module" src="/assets/app.js">"#),
        "{page}"
    );
    let committed =
        std::fs::read_to_string(repo_root().join("crates/duplex-server/web/app.js")).unwrap();
    let script = http_get(web, "/assets/app.js");
    assert!(
        script.contains("content-type: text/javascript; charset=utf-8"),
        "{}",
        &script[..300.min(script.len())]
    );
    assert!(
        script.ends_with(&committed),
        "the served bundle is the committed one"
    );
    let style = http_get(web, "/assets/style.css");
    assert!(
        style.contains("content-type: text/css; charset=utf-8"),
        "{style}"
    );
    assert!(http_get(web, "/assets/nothing.js").starts_with("HTTP/1.1 404"));
}
