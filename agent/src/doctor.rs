//! The checks of a database host, for `pgplane doctor` and for an agent as it starts: every
//! external program the agent drives (PostgreSQL per version, Patroni, etcd, HAProxy,
//! keepalived, pgBackRest) with its version, the state folder and the kernel settings the agent
//! sets (`tcp_migrate_req`, and `ip_nonlocal_bind` for virtual IPs), and the
//! paths that broke before, exercised for real: Patroni's own Python reaching a short-lived etcd
//! over https, and HAProxy checking a short-lived TLS server against a CA. Each check ends in
//! one line: the version found, or what to install or change. Blocking; everything it starts is
//! stopped by pid before it returns.

use crate::files::{ensure_dir, find_program};
use crate::node::bin_dir_for;
use crate::probes;
use pgplane_core::agent::{Capabilities, Check, CheckStatus};
use pgplane_localpg::{is_root, RunAs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// The folder the agent keeps databases in (must be writable).
    pub state_dir: PathBuf,
    /// PostgreSQL major versions that must be runnable here (besides every one found).
    pub versions: Vec<String>,
    /// Also exercise Patroni → etcd over https and HAProxy → TLS (starts short-lived servers).
    pub exercise: bool,
}

/// Runs every check and sums up what this host can do.
pub fn run(opts: &Options) -> Capabilities {
    let mut checks = Vec::new();
    let mut versions = Vec::new();
    for (version, check) in postgres_checks(&opts.versions) {
        if check.status == CheckStatus::Ok {
            versions.push(version);
        }
        checks.push(check);
    }
    let runas = RunAs::for_postgres();
    if let Err(e) = &runas {
        checks.push(fail("postgres OS user", format!("{e:#}")));
    }
    let patroni = patroni_check();
    // Needed by `pgplane up` and by this check's test etcd; a database host of a platform
    // reaches the platform's etcd and may not have the program.
    let etcd = program("etcd", "PGPLANE_ETCD", &["--version"], "etcd-server", false);
    let haproxy = program("haproxy", "PGPLANE_HAPROXY", &["-v"], "haproxy", true);
    let pgbackrest = program("pgbackrest", "PGPLANE_PGBACKREST", &["version"], "pgbackrest", false);
    // Only databases whose gateways span hosts need it (a platform with a VIP pool).
    let keepalived = keepalived_check();
    let nonlocal_bind = nonlocal_bind();
    // Both run as the postgres OS user.
    let mut patroni_ok = patroni.status == CheckStatus::Ok && runas.is_ok();
    let mut haproxy_ok = haproxy.status == CheckStatus::Ok && runas.is_ok();
    let pgbackrest_version = (pgbackrest.status == CheckStatus::Ok).then(|| pgbackrest.detail.clone());
    let pgbackrest_reach = pgbackrest_version.as_deref().map(|v| pgbackrest_covers(v, &versions));
    let etcd_ok = etcd.status == CheckStatus::Ok;
    let keepalived_ok = haproxy_ok && keepalived.status == CheckStatus::Ok && nonlocal_bind.status == CheckStatus::Ok;
    checks.extend([patroni, etcd, haproxy, keepalived, pgbackrest]);
    checks.extend(pgbackrest_reach);
    checks.push(state_dir(&opts.state_dir));
    checks.push(migrate_req());
    checks.push(nonlocal_bind);
    if opts.exercise {
        let runas = runas.as_ref().ok();
        let check = match (patroni_ok, runas) {
            (true, Some(runas)) => probes::patroni_reaches_etcd(runas, etcd_ok),
            _ => fail(probes::PATRONI_ETCD, "not tried: needs patroni and the postgres OS user (see above)"),
        };
        // A warning (no etcd program here to exercise it) leaves Patroni usable.
        patroni_ok &= check.status != CheckStatus::Fail;
        checks.push(check);
        let check = match (haproxy_ok, runas) {
            (true, Some(runas)) => probes::haproxy_checks_tls(runas),
            _ => fail(probes::HAPROXY_TLS, "not tried: needs haproxy and the postgres OS user (see above)"),
        };
        haproxy_ok &= check.status != CheckStatus::Fail;
        checks.push(check);
    }
    Capabilities {
        postgres_versions: versions,
        patroni: patroni_ok,
        haproxy: haproxy_ok,
        keepalived: keepalived_ok && haproxy_ok,
        pgbackrest: pgbackrest_version,
        checks,
    }
}

/// One line per check: `ok`, `warn` or `FAIL`, the name, and the detail.
pub fn line(check: &Check) -> String {
    let status = match check.status {
        CheckStatus::Ok => "ok  ",
        CheckStatus::Warn => "warn",
        CheckStatus::Fail => "FAIL",
    };
    format!("{status}  {}: {}", check.name, check.detail)
}

pub(crate) fn ok(name: &str, detail: impl Into<String>) -> Check {
    Check { name: name.into(), status: CheckStatus::Ok, detail: detail.into() }
}

pub(crate) fn warn(name: &str, detail: impl Into<String>) -> Check {
    Check { name: name.into(), status: CheckStatus::Warn, detail: detail.into() }
}

pub(crate) fn fail(name: &str, detail: impl Into<String>) -> Check {
    Check { name: name.into(), status: CheckStatus::Fail, detail: detail.into() }
}

/// Major versions looked for besides those asked for: wherever `bin_dir_for` finds them
/// (/usr/lib/postgresql/<v>/bin, or the folder found through pg_config or PATH).
const LOOKED_FOR: std::ops::RangeInclusive<u32> = 10..=20;

/// The check of every version asked for, and of every other version found, by version.
fn postgres_checks(asked: &[String]) -> Vec<(String, Check)> {
    let mut versions: Vec<u32> = LOOKED_FOR.chain(asked.iter().filter_map(|v| v.parse().ok())).collect();
    versions.sort_unstable();
    versions.dedup();
    let mut checks = Vec::new();
    for version in versions.iter().map(u32::to_string) {
        let check = postgres(&version);
        if check.status == CheckStatus::Ok || asked.contains(&version) {
            checks.push((version, check));
        }
    }
    if checks.is_empty() {
        // Nothing asked for nor found: say what to install.
        checks.push(("15".to_string(), postgres("15")));
    }
    checks
}

/// The programs a member needs from a PostgreSQL folder (Patroni runs the last three).
const POSTGRES_PROGRAMS: &[&str] = &["postgres", "initdb", "pg_ctl", "pg_basebackup", "pg_rewind", "psql"];

/// PostgreSQL `version`: its folder as the agent finds it, every program a member needs, and
/// `postgres --version` naming that major version.
fn postgres(version: &str) -> Check {
    let name = format!("postgres {version}");
    let install = format!("apt-get install postgresql-{version}");
    let dir = match bin_dir_for(version) {
        Ok(dir) => dir,
        Err(_) => return fail(&name, format!("no server binaries found: {install}")),
    };
    let missing: Vec<&str> = POSTGRES_PROGRAMS.iter().copied().filter(|p| !dir.join(p).is_file()).collect();
    if !missing.is_empty() {
        return fail(&name, format!("{} lacks {}: {install}", dir.display(), missing.join(", ")));
    }
    match output(Command::new(dir.join("postgres")).arg("--version")) {
        Ok(text) => {
            // `postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)`
            let release = text.split_whitespace().nth(2).unwrap_or_default().to_string();
            if release.split('.').next() == Some(version) {
                ok(&name, format!("{release} in {}", dir.display()))
            } else {
                fail(
                    &name,
                    format!("no server binaries (the ones found, in {}, are {release}): {install}", dir.display()),
                )
            }
        }
        Err(e) => fail(&name, format!("{} --version failed ({e}): {install}", dir.join("postgres").display())),
    }
}

/// The oldest Patroni pgplane runs: 3.0.3, the first whose etcd3 leader-key write is conditional
/// on its own lease (Debian 12's 3.0.2 took the key back after a partition, and the writes the new
/// leader had acknowledged were thrown away). Later versions run pgplane's configuration too (the
/// agent accepts `master`/`primary` and `running`/`streaming`; the launcher lifts 4.x's timing
/// floors where they exist), but only the version `scripts/install-deps` pins, 4.1.5, was
/// measured in the partition lab.
pub const MIN_PATRONI: (u32, u32, u32) = (3, 0, 3);

/// `4.1.5` → `(4, 1, 5)`; missing parts are 0, a suffix (`4.1.0rc1`) is ignored.
fn release(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    Some((major, parts.next().flatten().unwrap_or(0), parts.next().flatten().unwrap_or(0)))
}

/// The Patroni the agent would run (`crate::patroni::program`), new enough.
fn patroni_check() -> Check {
    let install = "scripts/install-deps installs the pinned one";
    let path = match crate::patroni::program() {
        Ok(path) => path,
        Err(_) => return fail("patroni", format!("not found (nor PGPLANE_PATRONI): {install}")),
    };
    let version = match output(Command::new(&path).arg("--version")) {
        Ok(text) => version_line("patroni", &text),
        Err(e) => return fail("patroni", format!("{} --version failed ({e}): {install}", path.display())),
    };
    let (a, b, c) = MIN_PATRONI;
    match release(&version) {
        Some(found) if found >= MIN_PATRONI => ok("patroni", format!("{version} ({})", path.display())),
        _ => fail(
            "patroni",
            format!(
                "{version} at {} is older than {a}.{b}.{c} (its etcd leader key handling can lose acknowledged \
                 writes): {install}",
                path.display()
            ),
        ),
    }
}

/// A program on PATH (or named by `env`) and the first line of its version.
fn program(name: &str, env: &str, version_args: &[&str], package: &str, required: bool) -> Check {
    let path = match find_program(name, env) {
        Ok(path) => path,
        Err(_) if required => return fail(name, format!("not found on PATH (or {env}): apt-get install {package}")),
        Err(_) => return warn(name, format!("not installed (optional): apt-get install {package}")),
    };
    match output(Command::new(&path).args(version_args)) {
        Ok(text) => ok(name, version_line(name, &text)),
        Err(e) => fail(
            name,
            format!(
                "{} {} failed ({e}): apt-get install --reinstall {package}",
                path.display(),
                version_args.join(" ")
            ),
        ),
    }
}

/// Which of the PostgreSQL versions found here pgBackRest `version` can back up (PITR plans):
/// a warning names those it refuses.
fn pgbackrest_covers(version: &str, postgres_versions: &[String]) -> Check {
    const NAME: &str = "pgbackrest versions";
    let Some(max) = crate::pgbackrest::max_postgres_major(version) else {
        return warn(NAME, format!("unknown pgBackRest version {version:?}"));
    };
    let refused: Vec<&str> =
        postgres_versions.iter().filter(|v| v.parse::<u32>().is_ok_and(|v| v > max)).map(String::as_str).collect();
    if refused.is_empty() {
        ok(NAME, format!("{version} backs up PostgreSQL up to {max}"))
    } else {
        warn(NAME, format!("{version} backs up PostgreSQL up to {max}: no PITR for {} here", refused.join(", ")))
    }
}

/// `patroni 3.0.2` → `3.0.2`; `etcd Version: 3.4.23` → `3.4.23`; `HAProxy version 2.6.12-1 …` →
/// `2.6.12-1`; `pgBackRest 2.45` → `2.45`: the first word that starts with a digit.
fn version_line(name: &str, text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    first
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{name}: {first}"))
}

/// Runs `cmd` (stdin closed) and returns its stdout, or why it failed.
pub(crate) fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{}: {}", out.status, err.lines().last().unwrap_or_default()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The state folder: made if missing (as the agent would), writable, and who owns it.
fn state_dir(dir: &Path) -> Check {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let name = "state folder";
    if let Err(e) = ensure_dir_keep_mode(dir) {
        return fail(name, format!("cannot create {}: {e:#}; choose another folder or fix its parent", dir.display()));
    }
    let probe = dir.join(format!(".pgplane-doctor-{}", std::process::id()));
    if let Err(e) = std::fs::write(&probe, "") {
        return fail(name, format!("{} is not writable ({e}): chown it to the user that runs pgplane", dir.display()));
    }
    let _ = std::fs::remove_file(&probe);
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) => return fail(name, format!("{}: {e}", dir.display())),
    };
    let detail =
        format!("{} writable, owner uid {}, mode {:o}", dir.display(), meta.uid(), meta.permissions().mode() & 0o7777);
    if is_root() && meta.uid() != 0 {
        return warn(name, format!("{detail}: owned by another user than root, who runs the agent"));
    }
    ok(name, detail)
}

/// Creates `dir` as the agent does (0711) when missing; leaves an existing one as it is.
fn ensure_dir_keep_mode(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    ensure_dir(dir, 0o711, None)
}

/// `net.ipv4.tcp_migrate_req`, which the agent sets (as root) so that a gateway reload hands its
/// queued connections to the gateway that stays.
fn migrate_req() -> Check {
    let name = "sysctl net.ipv4.tcp_migrate_req";
    match std::fs::read_to_string(crate::lifecycle::TCP_MIGRATE_REQ).map(|v| v.trim().to_string()) {
        Ok(v) if v == "1" => ok(name, "1"),
        Ok(v) if is_root() => ok(name, format!("{v}, the agent sets it to 1 when it starts (as root)")),
        Ok(v) => warn(
            name,
            format!("{v}: a gateway reload may reset queued connections; sysctl -w net.ipv4.tcp_migrate_req=1"),
        ),
        Err(_) => warn(name, "not in this kernel (Linux 5.14+): a gateway reload may reset queued connections"),
    }
}

/// keepalived, which carries a database's virtual IP between gateway hosts: found, its version
/// (it prints it on stderr), and run as root (it adds the address to an interface). Optional:
/// a warning when missing, and the host then gets no gateway of a database with a VIP.
fn keepalived_check() -> Check {
    let name = "keepalived";
    let path = match find_program(name, "PGPLANE_KEEPALIVED") {
        Ok(path) => path,
        Err(_) => {
            return warn(
                name,
                "not installed (needed for a database's virtual IP across hosts): apt-get install keepalived",
            )
        }
    };
    let out = match Command::new(&path).arg("--version").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return fail(
                name,
                format!("{} --version failed ({}): apt-get install --reinstall keepalived", path.display(), out.status),
            )
        }
        Err(e) => {
            return fail(
                name,
                format!("{} --version failed ({e}): apt-get install --reinstall keepalived", path.display()),
            )
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let version = keepalived_version(&text);
    if !is_root() {
        return warn(
            name,
            format!("{version}: keepalived adds a virtual IP to an interface, which needs root: run the agent as root"),
        );
    }
    ok(name, version)
}

/// `Keepalived v2.2.7 (01/16,2022)` → `2.2.7`.
fn keepalived_version(text: &str) -> String {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
    first
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v').filter(|v| v.starts_with(|c: char| c.is_ascii_digit())))
        .map(str::to_string)
        .unwrap_or_else(|| version_line("keepalived", first))
}

/// `net.ipv4.ip_nonlocal_bind`, which the agent sets (as root) so that every gateway host of a
/// database binds its virtual IP while keepalived gives it to one of them only.
fn nonlocal_bind() -> Check {
    let name = "sysctl net.ipv4.ip_nonlocal_bind";
    match std::fs::read_to_string(crate::lifecycle::IP_NONLOCAL_BIND).map(|v| v.trim().to_string()) {
        Ok(v) if v == "1" => ok(name, "1"),
        Ok(v) if is_root() => ok(name, format!("{v}, the agent sets it to 1 when it starts (as root)")),
        Ok(v) => warn(
            name,
            format!(
                "{v}: a gateway cannot bind its database's virtual IP while another host holds it; \
                 sysctl -w net.ipv4.ip_nonlocal_bind=1"
            ),
        ),
        Err(_) => warn(name, "not in this kernel: gateways cannot bind a virtual IP"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_the_first_numeric_word() {
        assert_eq!(version_line("patroni", "patroni 3.0.2\n"), "3.0.2");
        assert_eq!(version_line("etcd", "etcd Version: 3.4.23\nGit SHA: Not provided\n"), "3.4.23");
        assert_eq!(
            version_line("haproxy", "HAProxy version 2.6.12-1+deb12u1 2023/12/16 - https://…\n"),
            "2.6.12-1+deb12u1"
        );
        assert_eq!(version_line("pgbackrest", "pgBackRest 2.45\n"), "2.45");
    }

    #[test]
    fn pgbackrest_names_the_postgres_versions_it_refuses() {
        let found = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(pgbackrest_covers("2.45", &found(&["15"])).status, CheckStatus::Ok);
        let check = pgbackrest_covers("2.45", &found(&["15", "16", "18"]));
        assert_eq!(check.status, CheckStatus::Warn);
        assert!(check.detail.ends_with("no PITR for 16, 18 here"), "{}", check.detail);
        assert_eq!(pgbackrest_covers("2.55.1", &found(&["15", "18"])).status, CheckStatus::Ok);
    }

    #[test]
    fn keepalived_says_its_version_on_stderr() {
        assert_eq!(keepalived_version("Keepalived v2.2.7 (01/16,2022)\n\nCopyright(C) 2001-2022\n"), "2.2.7");
        assert_eq!(keepalived_version("\nKeepalived v2.3.1 (05/24,2024)\n"), "2.3.1");
    }

    #[test]
    fn the_vip_checks_run_and_say_what_they_found() {
        // Whatever this host has, each check is there with a version or what to do.
        let caps = run(&Options { state_dir: std::env::temp_dir(), versions: Vec::new(), exercise: false });
        let keepalived = caps.checks.iter().find(|c| c.name == "keepalived").expect("a keepalived check");
        let sysctl = caps.checks.iter().find(|c| c.name == "sysctl net.ipv4.ip_nonlocal_bind").expect("a sysctl check");
        let installed = find_program("keepalived", "PGPLANE_KEEPALIVED").is_ok();
        if installed && is_root() && caps.haproxy {
            assert_eq!(keepalived.status, CheckStatus::Ok, "{keepalived:?}");
            assert!(keepalived.detail.starts_with(|c: char| c.is_ascii_digit()), "{keepalived:?}");
            assert_eq!(sysctl.status, CheckStatus::Ok, "{sysctl:?}");
            assert!(caps.keepalived, "{caps:?}");
        }
        if !installed {
            assert!(keepalived.detail.contains("apt-get install keepalived"), "{keepalived:?}");
            assert!(!caps.keepalived);
        }
    }

    #[test]
    fn patroni_releases_compare() {
        assert_eq!(release("4.1.5"), Some((4, 1, 5)));
        assert_eq!(release("4.1.0rc1"), Some((4, 1, 0)));
        assert_eq!(release("4"), Some((4, 0, 0)));
        assert!(release("3.0.2").unwrap() < MIN_PATRONI && release("3.0.3").unwrap() >= MIN_PATRONI);
        assert_eq!(release("patroni: oops"), None);
    }

    #[test]
    fn lines_say_ok_or_what_to_do() {
        assert_eq!(line(&ok("etcd", "3.4.23")), "ok    etcd: 3.4.23");
        assert_eq!(
            line(&fail(
                "patroni → etcd over https",
                "missing python module idna for pyOpenSSL: apt-get install python3-idna"
            )),
            "FAIL  patroni → etcd over https: missing python module idna for pyOpenSSL: apt-get install python3-idna"
        );
    }
}
