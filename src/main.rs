//! The `sipedge` command: run the proxy, or check a configuration file.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sipedge::config::{Config, LogFormat, Overrides, StackOverrides, apply_overrides};
use sipedge::transport::lifecycle::LogLevelFn;
use sipedge::transport::{Hooks, RunOpts};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const AFTER_HELP: &str = "\
Examples:
  sipedge                                    run with the built-in defaults
                                             (= etc/sipedge.toml)
  sipedge --config /etc/sipedge/sipedge.toml
  sipedge --listen udp:127.0.0.1:5060 --listen tcp:127.0.0.1:5060 \\
          --upstream 'sip:10.0.0.5:5060;transport=tcp'
  sipedge --listen 'udp:0.0.0.0:5060 advertise 198.51.100.7:5060' --metrics off
  sipedge check-config etc/sipedge.toml      validate, print the effective config
  sipedge --stack afpacket --iface eth1 --ipv4 198.18.0.2/24 --gateway4 198.18.0.1 \\
          --listen udp:198.18.0.2:5060 --listen tcp:198.18.0.2:5060 \\
          --upstream 'sip:198.18.0.10:5060;transport=tcp'
                                             the embedded stack on eth1 (root or
                                             CAP_NET_RAW; the kernel must not own
                                             198.18.0.2); /metrics stays on a
                                             kernel socket
  RUST_LOG=sipedge=debug sipedge             RUST_LOG overrides the log level

Signals: SIGTERM/SIGINT drain (new TCP connections refused, /ready 503,
existing connections and UDP exchanges finish within proxy.drain_timeout_secs),
a second one stops at once; SIGHUP re-reads the configuration file and
applies upstreams, selection, nosip, log.level and [tcp] (for new
connections); other changed keys are refused by name until a restart.

Exit status: 0 ok, 1 runtime error, 2 invalid configuration or usage.";

/// SIP edge proxy: Kamailio-style TCP read path, nosip hook, stateless
/// forwarding, Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "sipedge", version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// TOML configuration file (default: built-in defaults, identical to etc/sipedge.toml).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Listen address, replacing proxy.listen; repeat for several.
    /// Form: udp:IP:PORT | tcp:IP:PORT, IPv6 in brackets, optionally
    /// followed by " advertise HOST:PORT" (required for 0.0.0.0 / [::]).
    #[arg(long, value_name = "SPEC", global = true)]
    listen: Vec<String>,

    /// Upstream SIP server, replacing proxy.upstreams; repeat for several.
    /// Form: sip:HOST[:PORT][;transport=udp|tcp] (port default 5060).
    #[arg(long, value_name = "URI", global = true)]
    upstream: Vec<String>,

    /// Prometheus endpoint address IP:PORT, replacing metrics.listen; "off" disables it.
    #[arg(long, value_name = "ADDR", global = true)]
    metrics: Option<String>,

    /// Log filter (trace|debug|info|warn|error|off or an EnvFilter directive
    /// list like "info,sipedge=debug"), replacing log.level. RUST_LOG, when
    /// set, still wins.
    #[arg(long, value_name = "LEVEL", global = true)]
    log_level: Option<String>,

    /// Log line format, replacing log.format.
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"], global = true)]
    log_format: Option<String>,

    /// Seconds SIGTERM lets existing connections and UDP exchanges finish
    /// (0 = stop at once), replacing proxy.drain_timeout_secs.
    #[arg(long, value_name = "SECS", global = true)]
    drain_timeout: Option<u64>,

    /// Lower layer, replacing stack.mode: "kernel" sockets or the embedded
    /// userspace stack over AF_PACKET ("afpacket").
    #[arg(long, value_name = "MODE", value_parser = ["kernel", "afpacket"], global = true)]
    stack: Option<String>,

    /// afpacket: the interface the stack runs on, replacing stack.interface.
    #[arg(long, value_name = "IF", global = true)]
    iface: Option<String>,

    /// afpacket: the stack's IPv4 address, ADDR/PREFIX, replacing stack.ipv4.
    #[arg(long, value_name = "ADDR/PREFIX", global = true)]
    ipv4: Option<String>,

    /// afpacket: the stack's IPv6 address, ADDR/PREFIX, replacing stack.ipv6.
    #[arg(long, value_name = "ADDR/PREFIX", global = true)]
    ipv6: Option<String>,

    /// afpacket: the stack's MAC (default: the interface's), replacing stack.mac.
    #[arg(long, value_name = "MAC", global = true)]
    mac: Option<String>,

    /// afpacket: IPv4 default gateway (on the stack.ipv4 prefix), replacing stack.gateway4.
    #[arg(long, value_name = "ADDR", global = true)]
    gateway4: Option<String>,

    /// afpacket: IPv6 default gateway (link-local or on the prefix), replacing stack.gateway6.
    #[arg(long, value_name = "ADDR", global = true)]
    gateway6: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate FILE (plus any override flags) and print the effective
    /// configuration; exit 0 when valid, 2 with "error: ..." otherwise.
    CheckConfig {
        /// The TOML configuration file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            upstreams: self.upstream.clone(),
            metrics: self.metrics.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
            drain_timeout_secs: self.drain_timeout,
            stack: StackOverrides {
                mode: self.stack.clone(),
                interface: self.iface.clone(),
                ipv4: self.ipv4.clone(),
                ipv6: self.ipv6.clone(),
                mac: self.mac.clone(),
                gateway4: self.gateway4.clone(),
                gateway6: self.gateway6.clone(),
            },
        }
    }
}

/// Load the file (or the defaults) and apply the command-line overrides.
fn load(file: Option<&Path>, o: &Overrides) -> anyhow::Result<Config> {
    let cfg = match file {
        Some(path) => Config::from_file(path)
            .with_context(|| format!("configuration file {}", path.display()))?,
        None => Config::default_config(),
    };
    apply_overrides(cfg, o).context("command-line options")
}

/// tracing-subscriber fmt, text or JSON; `RUST_LOG` if set, else the
/// configured level. Returns what changes the level on a reload (`None`
/// when `RUST_LOG` fixes it).
fn init_logging(cfg: &Config) -> anyhow::Result<Option<LogLevelFn>> {
    use tracing_subscriber::EnvFilter;
    let (filter, fixed) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => (
            EnvFilter::try_new(&v).with_context(|| format!("RUST_LOG={v:?}"))?,
            true,
        ),
        _ => (
            EnvFilter::try_new(&cfg.log_level)
                .with_context(|| format!("log.level {:?}", cfg.log_level))?,
            false,
        ),
    };
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let err = |e| anyhow::anyhow!("cannot initialise logging: {e}");
    let set: LogLevelFn = match cfg.log_format {
        LogFormat::Text => {
            let b = builder.with_filter_reloading();
            let h = b.reload_handle();
            b.try_init().map_err(err)?;
            Box::new(move |level: &str| Ok(h.reload(EnvFilter::try_new(level)?)?))
        }
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let h = b.reload_handle();
            b.try_init().map_err(err)?;
            Box::new(move |level: &str| Ok(h.reload(EnvFilter::try_new(level)?)?))
        }
    };
    Ok((!fixed).then_some(set))
}

fn config_error(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = cli.overrides();
    match &cli.command {
        Some(Command::CheckConfig { file }) => match load(Some(file), &overrides) {
            Ok(cfg) => {
                print!("{}", cfg.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        None => {
            let cfg = match load(cli.config.as_deref(), &overrides) {
                Ok(cfg) => cfg,
                Err(e) => return config_error(&e),
            };
            let set_log_level = match init_logging(&cfg) {
                Ok(s) => s,
                Err(e) => return config_error(&e),
            };
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                listen = ?cfg.listen.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                upstreams = ?cfg.upstreams.iter().map(|u| u.uri.as_str()).collect::<Vec<_>>(),
                "sipedge starting"
            );
            // SIGHUP re-reads the same file with the same flags
            let file = cli.config.clone();
            let opts = RunOpts {
                reload: Some(Box::new(move || load(file.as_deref(), &overrides))),
                set_log_level,
            };
            match sipedge::transport::run_with_opts(cfg, Hooks::default(), opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "sipedge stopped");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn repeatable_flags_collect_into_overrides() {
        let cli = Cli::try_parse_from([
            "sipedge",
            "--listen",
            "udp:127.0.0.1:5070",
            "--listen",
            "tcp:127.0.0.1:5070",
            "--upstream",
            "sip:127.0.0.1:6000",
            "--metrics",
            "off",
            "--log-format",
            "json",
        ])
        .unwrap();
        let o = cli.overrides();
        assert_eq!(o.listen.len(), 2);
        assert_eq!(o.upstreams, ["sip:127.0.0.1:6000"]);
        let cfg = load(None, &o).unwrap();
        assert_eq!(cfg.listen.len(), 2);
        assert_eq!(cfg.listen[0].addr.port(), 5070);
        assert_eq!(cfg.metrics_listen, None);
        assert_eq!(cfg.log_format, LogFormat::Json);
    }

    #[test]
    fn afpacket_flags_configure_the_stack_without_a_file() {
        let cli = Cli::try_parse_from([
            "sipedge",
            "--stack",
            "afpacket",
            "--iface",
            "veth0",
            "--ipv4",
            "198.18.0.2/24",
            "--ipv6",
            "2001:db8::2/64",
            "--mac",
            "02:00:00:00:00:02",
            "--gateway4",
            "198.18.0.1",
            "--gateway6",
            "fe80::1",
            "--listen",
            "udp:198.18.0.2:5060",
            "--listen",
            "tcp:198.18.0.2:5060",
            "--listen",
            "tcp:[2001:db8::2]:5060",
            "--upstream",
            "sip:198.18.0.10;transport=tcp",
        ])
        .unwrap();
        let cfg = load(None, &cli.overrides()).unwrap();
        let st = &cfg.stack;
        assert_eq!(st.mode, sipedge::config::StackMode::Afpacket);
        assert_eq!(st.interface, "veth0");
        assert_eq!(st.ipv4, Some(("198.18.0.2".parse().unwrap(), 24)));
        assert_eq!(st.ipv6, Some(("2001:db8::2".parse().unwrap(), 64)));
        assert_eq!(st.mac, Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(st.gateway4, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(st.gateway6, Some("fe80::1".parse().unwrap()));
        assert_eq!(cfg.listen.len(), 3);
    }

    #[test]
    fn afpacket_flag_errors_name_the_flag_or_key() {
        let base = [
            "sipedge",
            "--stack",
            "afpacket",
            "--iface",
            "veth0",
            "--listen",
            "tcp:198.18.0.2:5060",
        ];
        let err = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            let cli = Cli::try_parse_from(args).unwrap();
            format!("{:#}", load(None, &cli.overrides()).unwrap_err())
        };
        assert!(err(&["--ipv4", "198.18.0.2"]).contains("--ipv4"));
        assert!(err(&["--ipv4", "198.18.0.2/24", "--mac", "ff:ff:ff:ff:ff:ff"]).contains("--mac"));
        assert!(err(&["--ipv4", "198.18.0.2/24", "--gateway4", "x"]).contains("--gateway4"));
        // a cross-key rule names the config key
        assert!(
            err(&["--ipv4", "198.18.0.2/24", "--gateway4", "198.19.0.1"])
                .contains("stack.gateway4")
        );
        // the listen address must be the stack's own
        let e = err(&["--ipv4", "198.18.0.3/24"]);
        assert!(
            e.contains("proxy.listen[0]") && e.contains("stack.ipv4"),
            "{e}"
        );
        // no address at all
        assert!(err(&[]).contains("stack.ipv4"));
        // stack flags without afpacket mode
        let cli = Cli::try_parse_from(["sipedge", "--iface", "veth0"]).unwrap();
        let e = format!("{:#}", load(None, &cli.overrides()).unwrap_err());
        assert!(
            e.contains("--iface") && e.contains("--stack afpacket"),
            "{e}"
        );
        assert!(Cli::try_parse_from(["sipedge", "--stack", "dpdk"]).is_err());
    }

    #[test]
    fn check_config_subcommand() {
        let cli = Cli::try_parse_from(["sipedge", "check-config", "x.toml"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::CheckConfig { ref file }) if file == Path::new("x.toml"))
        );
        assert!(Cli::try_parse_from(["sipedge", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn load_errors_name_file_and_key() {
        let o = Overrides {
            listen: vec!["bogus".into()],
            ..Overrides::default()
        };
        let e = load(None, &o).unwrap_err();
        assert!(format!("{e:#}").contains("--listen"), "{e:#}");
        let e = load(Some(Path::new("/nonexistent.toml")), &Overrides::default()).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent.toml"), "{e:#}");
    }
}
