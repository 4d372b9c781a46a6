//! `pgplane doctor` on this machine, with the real programs: every check passes here, and with
//! the `idna` module hidden from Patroni's Python (as on a host with python3-openssl but without
//! python3-idna) or, for the Patroni of scripts/install-deps, a module of its virtual
//! environment hidden, it names the missing module and what to do, and exits non-zero.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Runs `pgplane doctor`; returns its exit success and its lines.
fn doctor(state: &Path, pythonpath: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgplane"));
    cmd.args(["doctor", "--state-dir"]).arg(state);
    if let Some(path) = pythonpath {
        cmd.env("PYTHONPATH", path);
    }
    let out = cmd.output().expect("run pgplane doctor");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn doctor_checks_this_machine_and_names_a_missing_python_module() {
    let dir = std::env::temp_dir().join(format!("pgplane-doctor-test-{}", std::process::id()));
    let state = dir.join("state");
    let (ok, out) = doctor(&state, None);
    assert!(ok, "{out}");
    for line in [
        "ok    postgres 15: ",
        "ok    patroni: ",
        "ok    haproxy: ",
        "ok    keepalived: ",
        "ok    state folder: ",
        "ok    sysctl net.ipv4.ip_nonlocal_bind: ",
    ] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
    assert!(out.contains("ok    patroni → etcd over https: ") && out.contains("reached etcd over https"), "{out}");
    assert!(out.contains("ok    haproxy → TLS check: ") && out.contains("marked it UP"), "{out}");
    assert!(state.is_dir(), "the state folder is made as the agent would");

    // Patroni's Python (run as the postgres user) must be able to read the stand-in modules.
    let hide = |module: &str| {
        let shim = dir.join(format!("no-{module}"));
        std::fs::create_dir_all(&shim).unwrap();
        let stub = format!("raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n");
        std::fs::write(shim.join(format!("{module}.py")), stub).unwrap();
        for p in [&dir, &shim, &shim.join(format!("{module}.py"))] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        doctor(&state, Some(&shim))
    };
    let (ok, broken) = hide("idna");
    if out.contains("on /opt/pgplane/patroni/bin/python") {
        // The virtual environment's dnspython (python-etcd's) needs idna: a pinned module.
        assert!(!ok, "{broken}");
        assert!(
            broken.contains(
                "FAIL  patroni → etcd over https: missing python module idna for Patroni: scripts/install-deps makes \
                 /opt/pgplane/patroni again"
            ),
            "{broken}"
        );
    } else if out.contains("through pyOpenSSL") {
        assert!(!ok, "{broken}");
        assert!(
            broken.contains(
                "FAIL  patroni → etcd over https: missing python module idna for pyOpenSSL: apt-get install python3-idna"
            ),
            "{broken}"
        );
    } else {
        // Without pyOpenSSL, urllib3 never imports idna: the host works either way.
        assert!(ok, "{broken}");
    }
    // A module Patroni's etcd3 driver imports (python-etcd), missing from Patroni's virtual
    // environment: the fix is to make that environment again, not a Debian package.
    if out.contains("on /opt/pgplane/patroni/bin/python") {
        let (ok, broken) = hide("etcd");
        assert!(!ok, "{broken}");
        assert!(
            broken.contains(
                "FAIL  patroni → etcd over https: missing python module etcd for Patroni: scripts/install-deps makes \
                 /opt/pgplane/patroni again"
            ),
            "{broken}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
