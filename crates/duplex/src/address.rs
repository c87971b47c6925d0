//! Server addresses as the client commands take them: `HOST:PORT`, a host alone (port
//! 50051, duplex's default), a port alone (on localhost), or a full `http(s)://` URL.

use anyhow::bail;
use duplex_server::config::{port_number, split_host_port};

/// The port `duplex serve` listens on by default.
pub(crate) const DEFAULT_PORT: u16 = 50051;

/// `addr` as the URL to connect to: `https://` with TLS, `http://` without, unless `addr`
/// already names a scheme.
pub(crate) fn client_url(addr: &str, tls: bool) -> anyhow::Result<String> {
    let addr = addr.trim();
    if let Some((scheme, rest)) = addr.split_once("://") {
        if scheme != "http" && scheme != "https" {
            bail!("`{addr}`: the scheme must be http:// or https://");
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((_, port)) = split_host_port(authority) {
            check_port(addr, port)?;
        }
        return Ok(addr.to_owned());
    }
    let scheme = if tls { "https" } else { "http" };
    if addr.is_empty() {
        bail!("the server address is empty: expected HOST:PORT, e.g. localhost:{DEFAULT_PORT}");
    }
    if addr.bytes().all(|b| b.is_ascii_digit()) {
        check_port(addr, addr)?;
        return Ok(format!("{scheme}://localhost:{addr}"));
    }
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(format!("{scheme}://[{addr}]:{DEFAULT_PORT}"));
    }
    if let Some(port) = addr.strip_prefix(':') {
        check_port(addr, port)?;
        return Ok(format!("{scheme}://localhost:{port}"));
    }
    match split_host_port(addr) {
        Some((host, port)) => {
            if host.is_empty() {
                bail!("`{addr}` has no host: expected HOST:PORT, e.g. localhost:{DEFAULT_PORT}");
            }
            check_port(addr, port)?;
            Ok(format!("{scheme}://{addr}"))
        }
        // A host alone: duplex's port.
        None if addr.contains(':') => {
            bail!(
                "`{addr}` is not HOST:PORT: expected e.g. localhost:{DEFAULT_PORT} or [::1]:{DEFAULT_PORT}"
            )
        }
        None => Ok(format!("{scheme}://{addr}:{DEFAULT_PORT}")),
    }
}

fn check_port(addr: &str, port: &str) -> anyhow::Result<()> {
    match port_number(port) {
        Ok(0) => bail!("`{addr}`: port 0 cannot be connected to; a port is 1 to 65535"),
        Ok(_) => Ok(()),
        Err(reason) => bail!("`{addr}`: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::client_url;

    #[test]
    fn addresses_take_every_short_form() {
        let url = |addr| client_url(addr, false).unwrap();
        assert_eq!(url("localhost:50051"), "http://localhost:50051");
        assert_eq!(url("localhost"), "http://localhost:50051");
        assert_eq!(url("50052"), "http://localhost:50052");
        assert_eq!(url(":50052"), "http://localhost:50052");
        assert_eq!(url("[::1]:7"), "http://[::1]:7");
        assert_eq!(url("::1"), "http://[::1]:50051");
        assert_eq!(url("http://h:1"), "http://h:1");
        assert_eq!(client_url("h", true).unwrap(), "https://h:50051");
    }

    #[test]
    fn bad_ports_are_named() {
        for addr in [
            "localhost:99999",
            "99999",
            "localhost:0",
            "http://h:70000",
            "h:x",
        ] {
            let error = client_url(addr, false).unwrap_err().to_string();
            assert!(error.contains("port"), "{addr}: {error}");
        }
    }
}
