//! Checks of the deployment files (no package is built here: `packaging/build.sh` and
//! `packaging/check.sh` do that, too slow for every test run; only the binary the packages ship
//! is built, once, and cached in target/zigbuild/):
//! - the glibc 2.17 build of `packaging/zigbuild.sh` needs no GLIBC symbol version newer than
//!   2.17 (skipped, with the reason, without zig and cargo-zigbuild);
//! - the package metadata in Cargo.toml lists every shipped file, both packages install the same
//!   paths, and every listed source exists;
//! - the unit, the tmpfiles entry, the example sysconfig and the nginx snippets agree on the run
//!   directory and the socket paths;
//! - `systemd-analyze verify` accepts the unit (skipped, with the reason, where it is missing);
//! - the maintainer scripts parse and create the service user;
//! - the licence (MIT), maintainer and minimum Rust version in the package metadata.

mod deploy_common;

use deploy_common::repo_root;
use std::collections::BTreeSet;
use std::process::Command;

fn read(rel: &str) -> String {
    let p = repo_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The lines of the `[section]` of Cargo.toml (up to the next `[` header at line start).
fn cargo_section(name: &str) -> Vec<String> {
    let toml = read("Cargo.toml");
    let header = format!("[{name}]");
    let mut lines = toml.lines().skip_while(|l| l.trim() != header);
    assert!(lines.next().is_some(), "Cargo.toml has no {header} section");
    lines
        .take_while(|l| !l.starts_with('['))
        .map(str::to_string)
        .collect()
}

/// All double-quoted strings on the asset lines of a section (`assets = [` … `]`).
fn asset_lines(section: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in section {
        let t = line.trim();
        if t.starts_with("assets = [") {
            inside = true;
            continue;
        }
        if inside && t == "]" {
            break;
        }
        if inside && !t.is_empty() && !t.starts_with('#') {
            out.push(quoted_strings(t));
        }
    }
    assert!(!out.is_empty(), "no assets found");
    out
}

fn quoted_strings(line: &str) -> Vec<String> {
    line.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// (source, dest) of the deb assets: `["source", "dest", "mode"]`, dest made absolute.
fn deb_assets() -> Vec<(String, String)> {
    asset_lines(&cargo_section("package.metadata.deb"))
        .into_iter()
        .map(|q| {
            assert!(q.len() >= 2, "bad deb asset {q:?}");
            (q[0].clone(), format!("/{}", q[1].trim_start_matches('/')))
        })
        .collect()
}

/// (source, dest) of the rpm assets: `{ source = "…", dest = "…", … }`.
fn rpm_assets() -> Vec<(String, String)> {
    let section = cargo_section("package.metadata.generate-rpm");
    asset_lines(&section)
        .into_iter()
        .zip(section.iter().filter(|l| l.contains("source = ")))
        .map(|(q, line)| {
            assert!(
                line.contains("source = \"") && line.contains("dest = \""),
                "bad rpm asset {line}"
            );
            (q[0].clone(), q[1].clone())
        })
        .collect()
}

/// Files that must be packaged: every file in nginx/ and the systemd files that are installed.
fn shipped_files() -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(repo_root().join("nginx")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        files.insert(format!("nginx/{name}"));
    }
    for f in [
        "systemd/push-server.service",
        "systemd/push-server.socket",
        "systemd/push-server-pub.socket",
        "systemd/push-server.tmpfiles",
        "systemd/push-server-multi.example",
        "README.md",
    ] {
        files.insert(f.to_string());
    }
    files
}

#[test]
fn package_metadata_lists_every_shipped_file() {
    let deb = deb_assets();
    let rpm = rpm_assets();
    for (kind, assets) in [("deb", &deb), ("rpm", &rpm)] {
        let sources: BTreeSet<&str> = assets.iter().map(|(s, _)| s.as_str()).collect();
        for f in shipped_files() {
            assert!(
                sources.contains(f.as_str()),
                "{f} is not in the {kind} assets of Cargo.toml"
            );
        }
        for (src, _) in assets.iter() {
            if src.starts_with("target/") {
                continue;
            }
            assert!(
                repo_root().join(src).is_file(),
                "{kind} asset {src} does not exist"
            );
        }
    }
    // Same install paths in both packages, except where the distributions differ.
    let deb_dests: BTreeSet<String> = deb
        .iter()
        .map(|(_, d)| match d.strip_prefix("/lib/systemd/") {
            Some(rest) => format!("/usr/lib/systemd/{rest}"),
            None => d.clone(),
        })
        .collect();
    let rpm_dests: BTreeSet<String> = rpm.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(deb_dests, rpm_dests, "deb and rpm install different paths");
    for must in [
        "/usr/bin/push-server",
        "/usr/lib/systemd/system/push-server.service",
        "/usr/lib/systemd/system/push-server.socket",
        "/usr/lib/systemd/system/push-server-pub.socket",
        "/usr/lib/tmpfiles.d/push-server.conf",
        "/etc/sysconfig/push-server-multi",
    ] {
        assert!(rpm_dests.contains(must), "{must} not packaged");
    }
    let deb_unit = deb
        .iter()
        .any(|(_, d)| d == "/lib/systemd/system/push-server.service");
    assert!(deb_unit, "deb: unit not in /lib/systemd/system");
}

#[test]
fn sysconfig_is_a_config_file_in_both_packages() {
    let deb = cargo_section("package.metadata.deb");
    assert!(
        deb.iter()
            .any(|l| l.starts_with("conf-files")
                && l.contains("\"/etc/sysconfig/push-server-multi\"")),
        "deb: /etc/sysconfig/push-server-multi not in conf-files"
    );
    let rpm = cargo_section("package.metadata.generate-rpm");
    assert!(
        rpm.iter().any(
            |l| l.contains("dest = \"/etc/sysconfig/push-server-multi\"")
                && l.contains("config = \"noreplace\"")
        ),
        "rpm: /etc/sysconfig/push-server-multi is not config(noreplace)"
    );
}

#[test]
fn run_dir_and_socket_paths_agree_everywhere() {
    let example = read("systemd/push-server-multi.example");
    assert!(
        example.contains("#RUN_DIR=/tmp/push-server\n"),
        "RUN_DIR default moved"
    );
    assert!(example.contains("#SUB_SOCK=/tmp/push-server/sub.sock\n"));
    assert!(example.contains("#PUB_SOCK=/tmp/push-server/pub.sock\n"));
    let http = read("nginx/push-server-http.conf");
    assert!(http.contains("server unix:/tmp/push-server/sub.sock;"));
    assert!(http.contains("server unix:/tmp/push-server/pub.sock;"));
    let tmpfiles = read("systemd/push-server.tmpfiles");
    assert!(
        tmpfiles
            .lines()
            .any(|l| l.starts_with("d /tmp/push-server 0770 bitrix bitrix")),
        "tmpfiles entry for /tmp/push-server missing"
    );
    let unit = read("systemd/push-server.service");
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/push-server --config /etc/sysconfig/push-server-multi",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "PrivateTmp=false",
        "ReadWritePaths=-/tmp/push-server",
        "User=bitrix",
        "Restart=on-failure",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks `{line}`");
    }
    // The socket units hold the same paths, each named for its role.
    for (unit, path, name) in [
        (
            "systemd/push-server.socket",
            "/tmp/push-server/sub.sock",
            "sub",
        ),
        (
            "systemd/push-server-pub.socket",
            "/tmp/push-server/pub.sock",
            "pub",
        ),
    ] {
        let text = read(unit);
        for line in [
            format!("ListenStream={path}"),
            format!("FileDescriptorName={name}"),
            "Service=push-server.service".to_owned(),
            "SocketGroup=bitrix".to_owned(),
            "SocketMode=0660".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "{unit} lacks `{line}`");
        }
    }
    assert!(
        unit.lines()
            .any(|l| l == "Also=push-server.socket push-server-pub.socket")
    );
    let vm = read("nginx/push-server-bitrixvm-upstreams.conf");
    assert!(vm.contains("upstream nodejs_sub") && vm.contains("server 127.0.0.1:8010;"));
    assert!(vm.contains("upstream nodejs_pub") && vm.contains("server 127.0.0.1:9010;"));
}

#[test]
fn maintainer_scripts_parse_and_create_the_user() {
    let scripts = [
        "packaging/debian/postinst",
        "packaging/debian/prerm",
        "packaging/debian/postrm",
        "packaging/rpm/pre-install.sh",
        "packaging/rpm/post-install.sh",
        "packaging/rpm/pre-uninstall.sh",
        "packaging/rpm/post-uninstall.sh",
    ];
    for s in scripts {
        let path = repo_root().join(s);
        let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let section = if s.contains("rpm") {
            "package.metadata.generate-rpm"
        } else {
            "package.metadata.deb"
        };
        let listed = cargo_section(section).iter().any(|l| {
            l.contains(&format!("\"{s}\""))
                || (s.starts_with("packaging/debian/") && l.contains("\"packaging/debian/\""))
        });
        assert!(listed, "{s} is not referenced by [{section}]");
    }
    for s in ["packaging/debian/postinst", "packaging/rpm/pre-install.sh"] {
        let text = read(s);
        assert!(text.contains("getent passwd bitrix"), "{s}: no user check");
        assert!(text.contains("useradd --system"), "{s}: no useradd");
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        println!("SKIP systemd_analyze_verify_accepts_the_unit: systemd-analyze is not installed");
        return;
    }
    let dir = deploy_common::TempDir::new("unit");
    // verify checks that ExecStart exists: point it at the test build of the binary.
    let unit = read("systemd/push-server.service")
        .replace("/usr/bin/push-server", env!("CARGO_BIN_EXE_push-server"));
    let path = dir.join("push-server.service");
    std::fs::write(&path, unit).unwrap();
    let mut units = vec![path];
    for socket in ["push-server.socket", "push-server-pub.socket"] {
        let p = dir.join(socket);
        std::fs::write(&p, read(&format!("systemd/{socket}"))).unwrap();
        units.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("Failed to ") && !stderr.contains("push-server") {
        // No usable systemd manager environment (e.g. some containers): not the unit's fault.
        println!(
            "SKIP systemd_analyze_verify_accepts_the_unit: systemd-analyze cannot run here: {stderr}"
        );
        return;
    }
    assert!(
        out.status.success() && !stderr.contains("push-server"),
        "systemd-analyze verify:\n{stderr}"
    );
}

/// Both packages say MIT (the LICENSE file ships with them) and name the project as the
/// maintainer; `rust-version` is the oldest Rust the code builds with.
#[test]
fn package_metadata_licence_maintainer_and_rust_version() {
    let package = cargo_section("package");
    let has = |section: &[String], line: &str| section.iter().any(|l| l.trim() == line);
    assert!(has(&package, "license = \"MIT\""), "{package:?}");
    assert!(has(&package, "rust-version = \"1.89\""), "{package:?}");
    let deb = cargo_section("package.metadata.deb");
    assert!(
        deb.iter()
            .any(|l| l.starts_with("maintainer = \"The push-server project <")),
        "{deb:?}"
    );
    let rpm = cargo_section("package.metadata.generate-rpm");
    assert!(has(&rpm, "license = \"MIT\""), "{rpm:?}");
    assert!(read("LICENSE").starts_with("MIT License"));
    for assets in [deb_assets(), rpm_assets()] {
        assert!(
            assets.iter().any(|(src, dest)| src == "LICENSE"
                && dest.ends_with("/usr/share/doc/push-server/LICENSE")),
            "LICENSE not shipped: {assets:?}"
        );
    }
}

/// The newest glibc the packages may need (packaging/README.md: Rocky/Alma 8+, Debian 11+).
const GLIBC_MAX: (u32, u32) = (2, 17);

/// Why the glibc 2.17 build cannot be made here, or `None` when it can.
fn zigbuild_missing() -> Option<String> {
    let runs = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !runs("cargo-zigbuild", &["--version"]) {
        return Some("cargo-zigbuild is not installed (pip install ziglang cargo-zigbuild)".into());
    }
    if !runs("zig", &["version"]) && !runs("python3", &["-m", "ziglang", "version"]) {
        return Some("zig is not installed (pip install ziglang)".into());
    }
    None
}

/// Every `GLIBC_x.y` version the ELF file needs, from `objdump -T` or `readelf --version-info`.
fn glibc_versions(bin: &std::path::Path) -> Vec<(u32, u32)> {
    let dump = [
        ("objdump", &["-T"][..]),
        ("readelf", &["--wide", "--version-info"][..]),
    ]
    .iter()
    .find_map(|(tool, args)| {
        let out = Command::new(tool).args(*args).arg(bin).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .expect("neither objdump nor readelf could read the binary (Debian: apt-get install binutils)");
    let mut versions: Vec<(u32, u32)> = dump
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let v: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions
}

/// The binary the packages ship (`packaging/zigbuild.sh`, glibc 2.17 through zig) needs no
/// glibc newer than 2.17, so the packages run on Rocky/Alma 8 and Debian 11. The build is
/// cached in target/zigbuild/ (a fresh one takes about 90 s on two cores; then seconds).
#[test]
fn packaged_binary_needs_no_glibc_newer_than_2_17() {
    // Both packages ship that build, not the host's target/release one.
    for assets in [deb_assets(), rpm_assets()] {
        let src = assets
            .iter()
            .find(|(_, dest)| dest == "/usr/bin/push-server")
            .map(|(src, _)| src.as_str());
        assert_eq!(
            src,
            Some("target/zigbuild/x86_64-unknown-linux-gnu/release/push-server"),
            "the packaged binary must be the one packaging/zigbuild.sh builds"
        );
    }
    // The deb's glibc dependency is written out: dpkg-shlibdeps would ask for the build
    // machine's glibc (packaging/check.sh reads it from the built .deb).
    let deb = cargo_section("package.metadata.deb");
    assert!(
        deb.iter()
            .any(|l| l.trim() == r#"depends = "libc6 (>= 2.17), passwd""#),
        "deb depends: {deb:?}"
    );
    if let Some(why) = zigbuild_missing() {
        println!(
            "SKIP packaged_binary_needs_no_glibc_newer_than_2_17: {why}; scripts/test.sh installs it"
        );
        return;
    }
    let out = Command::new("bash")
        .arg(repo_root().join("packaging/zigbuild.sh"))
        .current_dir(repo_root())
        .output()
        .expect("run packaging/zigbuild.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "packaging/zigbuild.sh failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = repo_root().join(stdout.lines().last().expect("the binary's path").trim());
    assert!(bin.is_file(), "{} was not built", bin.display());
    let versions = glibc_versions(&bin);
    let newest = *versions.last().unwrap_or_else(|| {
        panic!(
            "{}: no GLIBC symbol versions: not a glibc binary?",
            bin.display()
        )
    });
    assert!(
        newest <= GLIBC_MAX,
        "{} needs GLIBC_{}.{} (all: {versions:?}); the packages promise glibc {}.{}",
        bin.display(),
        newest.0,
        newest.1,
        GLIBC_MAX.0,
        GLIBC_MAX.1
    );
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(
        version.status.success()
            && String::from_utf8_lossy(&version.stdout).starts_with("push-server "),
        "the glibc 2.17 build does not run here: {version:?}"
    );
}
