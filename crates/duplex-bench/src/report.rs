//! [`Report`]: what a run measured, as text for people and JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::os::ServerSample;

/// A new latency histogram in nanoseconds: 1 µs to 100 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Records `nanos`, clamped into the histogram's range.
pub(crate) fn record(histogram: &mut Histogram<u64>, nanos: u64) {
    histogram.saturating_record(nanos.max(1_000));
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    /// The median.
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The 99.9th percentile.
    pub p999: f64,
    /// The largest sample.
    pub max: f64,
}

impl LatencySummary {
    /// The summary of `histogram` (nanoseconds); `None` when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let us = |nanos: u64| nanos as f64 / 1_000.0;
        Some(Self {
            count: histogram.len(),
            mean: histogram.mean() / 1_000.0,
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
        })
    }

    fn json(&self) -> Value {
        json!({
            "count": self.count,
            "mean": round(self.mean),
            "p50": round(self.p50),
            "p90": round(self.p90),
            "p99": round(self.p99),
            "p999": round(self.p999),
            "max": round(self.max),
        })
    }

    fn text(&self) -> String {
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
            micros(self.p50),
            micros(self.p90),
            micros(self.p99),
            micros(self.p999),
            micros(self.max),
            self.count
        )
    }
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1}ms", us / 1_000.0)
    } else {
        format!("{us:.0}µs")
    }
}

/// What the OS says the server spent during the measurement: with several `--server-pid`s
/// (a cluster), the sum, and each process in `processes`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerUsage {
    /// The (first) server process.
    pub pid: u32,
    /// CPU time (user + system) spent during the measurement.
    pub cpu: Duration,
    /// Resident set at the end, bytes.
    pub rss: u64,
    /// Peak resident set during the measurement, bytes.
    pub peak_rss: u64,
    /// Each process's own figures when several were measured (empty for one).
    pub processes: Vec<ServerUsage>,
}

impl ServerUsage {
    pub(crate) fn between(before: &ServerSample, after: &ServerSample) -> Option<Self> {
        let each: Vec<ServerUsage> = before
            .processes
            .iter()
            .zip(&after.processes)
            .map(|((pid, before), (_, after))| ServerUsage {
                pid: *pid,
                cpu: after.cpu.saturating_sub(before.cpu),
                rss: after.rss,
                peak_rss: after.peak_rss,
                processes: Vec::new(),
            })
            .collect();
        let first = each.first()?;
        Some(Self {
            pid: first.pid,
            cpu: each.iter().map(|p| p.cpu).sum(),
            rss: each.iter().map(|p| p.rss).sum(),
            peak_rss: each.iter().map(|p| p.peak_rss).sum(),
            processes: if each.len() > 1 { each } else { Vec::new() },
        })
    }
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's name, as given on the command line.
    pub scenario: &'static str,
    /// The server measured.
    pub addr: String,
    /// What counts as one message here: "round trips", "messages", "deliveries", …
    pub unit: &'static str,
    /// Messages counted in the measurement.
    pub messages: u64,
    /// The time they took (from the measurement's start to the last one counted).
    pub elapsed: Duration,
    /// Latency of each message (for fan-out: of each delivery, from its publish time).
    pub latency: Option<LatencySummary>,
    /// True when latency is measured from scheduled send times (`--rate`).
    pub corrected: bool,
    /// Fan-out and resume setup: latency from publish to durable ack.
    pub ack_latency: Option<LatencySummary>,
    /// Failed calls, sessions or commands, by gRPC status code name (or HTTP/2 error).
    pub errors: BTreeMap<String, u64>,
    /// The server's CPU time and peak memory, when its pid was given.
    pub server: Option<ServerUsage>,
    /// CPU time of this process during the measurement.
    pub client_cpu: Duration,
    /// The run's parameters.
    pub config: Value,
    /// Figures of this scenario only (published, acked, lost, RSS per session, …).
    pub extra: serde_json::Map<String, Value>,
}

impl Report {
    /// Messages per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.messages as f64 / secs
        } else {
            0.0
        }
    }

    /// Total errors.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Server CPU time per message, in microseconds.
    pub fn server_cpu_per_message(&self) -> Option<f64> {
        let server = self.server.as_ref()?;
        (self.messages > 0).then(|| server.cpu.as_secs_f64() * 1e6 / self.messages as f64)
    }

    fn client_cpu_per_message(&self) -> Option<f64> {
        (self.messages > 0).then(|| self.client_cpu.as_secs_f64() * 1e6 / self.messages as f64)
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let per_message = |cpu: Duration| {
            (self.messages > 0).then(|| round(cpu.as_secs_f64() * 1e6 / self.messages as f64))
        };
        let server = self.server.as_ref().map(|server| {
            let mut object = json!({
                "pid": server.pid,
                "cpu_s": round(server.cpu.as_secs_f64() * 100.0) / 100.0,
                "cpu_us_per_message": self.server_cpu_per_message().map(round),
                "rss_kib": server.rss / 1024,
                "peak_rss_kib": server.peak_rss / 1024,
            });
            if !server.processes.is_empty() {
                object["processes"] = server
                    .processes
                    .iter()
                    .map(|p| {
                        json!({
                            "pid": p.pid,
                            "cpu_s": round(p.cpu.as_secs_f64() * 100.0) / 100.0,
                            "cpu_us_per_message": per_message(p.cpu),
                            "peak_rss_kib": p.peak_rss / 1024,
                        })
                    })
                    .collect();
            }
            object
        });
        let mut object = json!({
            "scenario": self.scenario,
            "addr": self.addr,
            "unit": self.unit,
            "messages": self.messages,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput_per_s": round(self.throughput()),
            "latency_us": self.latency.map(|l| l.json()),
            "latency_corrected": self.corrected,
            "ack_latency_us": self.ack_latency.map(|l| l.json()),
            "errors": self.errors,
            "errors_total": self.error_count(),
            "server": server,
            "client": {
                "cpu_s": round(self.client_cpu.as_secs_f64() * 100.0) / 100.0,
                "cpu_us_per_message": self.client_cpu_per_message().map(round),
            },
            "config": self.config,
        });
        if let Value::Object(map) = &mut object {
            for (key, value) in &self.extra {
                map.insert(key.clone(), value.clone());
            }
        }
        object
    }

    /// The report as a few lines for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} against {}: {} {} in {:.2}s = {:.0}/s",
            self.scenario,
            self.addr,
            self.messages,
            self.unit,
            self.elapsed.as_secs_f64(),
            self.throughput()
        );
        if let Some(latency) = &self.latency {
            let how = if self.corrected {
                "latency (from scheduled send, corrected for coordinated omission)"
            } else {
                "latency"
            };
            let _ = writeln!(out, "  {how}: {}", latency.text());
        }
        if let Some(latency) = &self.ack_latency {
            let _ = writeln!(out, "  publish → durable ack: {}", latency.text());
        }
        for (key, value) in &self.extra {
            let _ = writeln!(out, "  {}: {value}", key.replace('_', " "));
        }
        if let Some(server) = &self.server {
            let per_message = |cpu: Duration| {
                (self.messages > 0)
                    .then(|| cpu.as_secs_f64() * 1e6 / self.messages as f64)
                    .map(|us| format!(" = {us:.2}µs per message"))
                    .unwrap_or_default()
            };
            let whose = if server.processes.is_empty() {
                format!("server pid {}", server.pid)
            } else {
                format!("servers ({} processes)", server.processes.len())
            };
            let _ = writeln!(
                out,
                "  {whose}: {:.2}s CPU{}, RSS {} KiB, peak {} KiB",
                server.cpu.as_secs_f64(),
                per_message(server.cpu),
                server.rss / 1024,
                server.peak_rss / 1024
            );
            for process in &server.processes {
                let _ = writeln!(
                    out,
                    "    pid {}: {:.2}s CPU{}, peak {} KiB",
                    process.pid,
                    process.cpu.as_secs_f64(),
                    per_message(process.cpu),
                    process.peak_rss / 1024
                );
            }
        }
        let _ = writeln!(
            out,
            "  client: {:.2}s CPU{}",
            self.client_cpu.as_secs_f64(),
            self.client_cpu_per_message()
                .map(|us| format!(" = {us:.2}µs per message"))
                .unwrap_or_default()
        );
        if self.errors.is_empty() {
            let _ = writeln!(out, "  errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "  errors: {}", list.join(", "));
        }
        out
    }
}

/// Adds `from` into `into`.
pub(crate) fn merge_errors(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (key, count) in from {
        *into.entry(key.clone()).or_default() += count;
    }
}
