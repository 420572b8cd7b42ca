//! Modes for a Dockerfile's `RUN` step in build tests (the test image has no shell):
//! `build-probe ADDR...` reports whether each TCP address could be reached (or each
//! `resolve:NAME` resolved) and which processes the step can see; `fill PATH MIB` writes MIB mebibytes to PATH, 1 MiB at a time.

use std::io::Write as _;
use std::time::Duration;

/// `build-probe ADDR...`: one `connect ADDR: reached|failed (why)` line per address (for
/// `resolve:NAME`, `resolve NAME: ADDRESS...|failed (why)`, through the step's resolv.conf),
/// then `processes: N [names]` for what `/proc` shows. Exits 0 either way: the build log is
/// the report.
pub fn probe(addrs: &[String]) -> ! {
    for addr in addrs {
        if let Some(name) = addr.strip_prefix("resolve:") {
            use std::net::ToSocketAddrs as _;
            let outcome = match (name, 0).to_socket_addrs() {
                Ok(found) => found.map(|a| a.ip().to_string()).collect::<Vec<_>>().join(" "),
                Err(e) => format!("failed ({e})"),
            };
            println!("resolve {name}: {outcome}");
            continue;
        }
        let outcome = match addr.parse::<std::net::SocketAddr>() {
            Ok(sa) => match std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(3)) {
                Ok(_) => "reached".to_owned(),
                Err(e) => format!("failed ({e})"),
            },
            Err(e) => format!("failed (not an address: {e})"),
        };
        println!("connect {addr}: {outcome}");
    }
    let mut names = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                names.push(comm.trim().to_owned());
            }
        }
    }
    names.sort();
    println!("processes: {} [{}]", names.len(), names.join(","));
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

/// `fill PATH MIB`: writes until done (exit 0) or a write fails (exit 1, the error printed).
pub fn fill(path: &str, mebibytes: u64) -> ! {
    let chunk = vec![0x5au8; 1 << 20];
    let result = (|| {
        let mut file = std::fs::File::create(path)?;
        for written in 0..mebibytes {
            file.write_all(&chunk)?;
            if written % 16 == 15 {
                file.sync_data()?;
            }
        }
        file.sync_all()
    })();
    match result {
        Ok(()) => {
            println!("fill: wrote {mebibytes} MiB to {path}");
            std::process::exit(0)
        }
        Err(e) => {
            println!("fill: {path}: {e}");
            std::process::exit(1)
        }
    }
}
