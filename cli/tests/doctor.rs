//! `pgplane doctor` on this machine, with the real programs: every check passes here, and with
//! the `idna` module hidden from Patroni's Python (as on a host with python3-openssl but without
//! python3-idna) it names the missing module and what to install, and exits non-zero.

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
    for line in ["ok    postgres 15: ", "ok    patroni: ", "ok    haproxy: ", "ok    state folder: "] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
    assert!(out.contains("ok    patroni → etcd over https: ") && out.contains("reached etcd over https"), "{out}");
    assert!(out.contains("ok    haproxy → TLS check: ") && out.contains("marked it UP"), "{out}");
    assert!(state.is_dir(), "the state folder is made as the agent would");

    // Patroni's Python (run as the postgres user) must be able to read the stand-in module.
    let shim = dir.join("no-idna");
    std::fs::create_dir_all(&shim).unwrap();
    std::fs::write(shim.join("idna.py"), "raise ModuleNotFoundError(\"No module named 'idna'\", name='idna')\n")
        .unwrap();
    for p in [&dir, &shim, &shim.join("idna.py")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (ok, broken) = doctor(&state, Some(&shim));
    if out.contains("through pyOpenSSL") {
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
    let _ = std::fs::remove_dir_all(&dir);
}
