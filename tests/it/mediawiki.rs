//! An engineer's day on real software: Debian's MediaWiki 1.39 (the `mediawiki` package's
//! `/usr/share/mediawiki`, with a LocalSettings.php that `maintenance/install.php` wrote for a
//! SQLite database in the test's temp dir) is built into an OCI image with umoci and synced by
//! the binary; php-fpm (with the php settings `render` gives: opcache on, revalidating) and nginx
//! serve the tree where the node's routing entry points; Debian's Traffic Server, with our
//! tslua script (`packaging/trafficserver/mw-experimental-debug-routing.lua`) reading the table
//! `routing` wrote, sends `X-Wikimedia-Debug: backend=<the node's entry>` there and everything
//! else to a stand-in production origin. A deployer (an unprivileged member of the deployer
//! group) edits a core PHP file; the next routed request, and headless Chromium with an
//! X-Wikimedia-Debug extension, see it; a new image keeps it and brings its own change;
//! `reset` restores the image's file.

use crate::support::ats::{get, Origin, TrafficServer};
use crate::support::browser::Browser;
use crate::support::oci::Layout;
use crate::support::perm::{GroupGuard, UserGuard};
use crate::support::web::{Nginx, PhpFpm};
use crate::support::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PACKAGE: &str = "/usr/share/mediawiki";
const V1: &str = "2026-01-10-100000-publish";
const V2: &str = "2026-01-11-100000-publish";
const PRODUCTION: &str = "production origin, not the mw-experimental node";

/// The MediaWiki version the package's `includes/Defines.php` sets.
fn package_version() -> String {
    let text = std::fs::read_to_string(format!("{PACKAGE}/includes/Defines.php")).unwrap();
    let start = "define( 'MW_VERSION', '";
    let i = text.find(start).expect("MW_VERSION in Defines.php") + start.len();
    text[i..i + text[i..].find('\'').unwrap()].to_string()
}

/// The image's tree: the package's code, with the four links Debian points into /var/lib and
/// /etc replaced by what a built image holds (empty extensions/ and images/, our settings).
fn stage_tree(dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    sh(Command::new("rsync")
        .args([
            "-a",
            "--exclude=/LocalSettings.php",
            "--exclude=/extensions",
        ])
        .args(["--exclude=/images", "--exclude=/config"])
        .arg(format!("{PACKAGE}/"))
        .arg(dest));
    for d in ["extensions", "images"] {
        std::fs::create_dir_all(dest.join(d)).unwrap();
    }
}

/// `maintenance/install.php` on SQLite: the database in `db` (written by www-data, as php-fpm
/// runs), the LocalSettings.php it writes copied into the tree.
fn install(tree: &Path, db: &Path, conf: &Path, server: &str) {
    std::fs::create_dir_all(db).unwrap();
    std::fs::create_dir_all(conf).unwrap();
    sh(Command::new("php")
        .arg(tree.join("maintenance/install.php"))
        .args(["--dbtype", "sqlite", "--dbpath"])
        .arg(db)
        .arg("--confpath")
        .arg(conf)
        .args(["--server", server, "--scriptpath", "", "--lang", "en"])
        .args(["--pass", "an-engineers-day-1", "Demo Wiki", "Admin"]));
    std::fs::copy(
        conf.join("LocalSettings.php"),
        tree.join("LocalSettings.php"),
    )
    .unwrap();
    sh(Command::new("chown")
        .args(["-R", "www-data:www-data"])
        .arg(db));
}

/// Tags `to` in the OCI layout `dir`: image `from` with one more (uncompressed) layer that
/// holds `path` with `content`, the way a build adds a commit on top. (umoci 0.4.7's `insert`
/// would do this, but writes a layer tar without its end: GNU tar and `sync` both stop at its
/// "unexpected EOF"; unpacking all of MediaWiki to `repack` it costs half a minute here.)
fn add_layer(dir: &Path, from: &str, to: &str, path: &str, content: &[u8]) {
    use sha2::Digest;
    let blobs = dir.join("blobs/sha256");
    let put = |b: &[u8]| -> (String, usize) {
        let h: String = sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        std::fs::write(blobs.join(&h), b).unwrap();
        (format!("sha256:{h}"), b.len())
    };
    let blob = |digest: &str| -> Value {
        let h = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(blobs.join(h)).unwrap()).unwrap()
    };
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let base = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == from)
        .expect("the base tag")
        .clone();
    let mut manifest = blob(base["digest"].as_str().unwrap());
    let mut config = blob(manifest["config"]["digest"].as_str().unwrap());

    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    tar.append_data(&mut h, path, content).unwrap();
    let (layer, size) = put(&tar.into_inner().unwrap());

    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(Value::from(layer.clone()));
    if let Some(history) = config["history"].as_array_mut() {
        history.push(serde_json::json!({"created_by": format!("change {path}")}));
    }
    let (cd, cs) = put(config.to_string().as_bytes());
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": size}));
    let (md, ms) = put(manifest.to_string().as_bytes());
    let mut entry = base;
    entry["digest"] = md.into();
    entry["size"] = ms.into();
    entry["annotations"]["org.opencontainers.image.ref.name"] = to.into();
    index["manifests"].as_array_mut().unwrap().push(entry);
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// The siteinfo the wiki's API reports through Traffic Server with `headers`.
fn siteinfo(ats: u16, headers: &[(&str, &str)]) -> Value {
    let r = get(
        ats,
        "/api.php?action=query&meta=siteinfo|allmessages&ammessages=tagline&amenableparser=1&format=json",
        headers,
    )
    .expect("request through Traffic Server");
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

fn generator(v: &Value) -> String {
    v["query"]["general"]["generator"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn tagline(v: &Value) -> String {
    v["query"]["allmessages"][0]["*"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Where a failure leaves its screenshot and DOM (kept; removed at the next passing run).
fn artefacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mediawiki-artefacts")
}

#[test]
fn real_mediawiki_routed_by_traffic_server_shows_a_deployers_edit_until_reset() {
    let started = Instant::now();
    for tool in [
        "php",
        "php-fpm8.2",
        "nginx",
        "umoci",
        "rsync",
        "traffic_server",
        "chromium",
    ] {
        assert!(have(tool), "{tool} is missing: run tests/install-deps");
    }
    assert!(
        Path::new(PACKAGE).join("index.php").is_file(),
        "Debian's mediawiki is missing: run tests/install-deps"
    );
    let version = package_version();
    let tmp = tempfile::tempdir().unwrap();
    // php-fpm and nginx (www-data) and the deployer reach the tree and database through it.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/trafficserver");
    let t = |s: &str| eprintln!("[{:5.1}s] {s}", started.elapsed().as_secs_f64());

    // The stand-in production origin, and Traffic Server in front (its port goes into the
    // wiki's $wgServer, so it starts first; the table file it reads is written below).
    let origin = Origin::start(&tmp.path().join("origin"), PRODUCTION);
    let table = tmp.path().join("mw-experimental-debug-routing.table");
    let ats_dir = tmp.path().join("ats");
    let ats = TrafficServer::start(
        &ats_dir,
        &format!(
            "map http://127.0.0.1:{{port}}/ http://127.0.0.1:{o}/ @plugin=tslua.so @pparam={s} @pparam={tb}\n",
            o = origin.port,
            s = scripts.join("mw-experimental-debug-routing.lua").display(),
            tb = table.display(),
        ),
    );
    let server = format!("http://127.0.0.1:{}", ats.port);
    t("traffic server up");

    // The image: the package's tree and its settings, V1 (umoci); V2 changes one message.
    let layout = Layout::new(tmp.path());
    let (db, conf) = (tmp.path().join("db"), tmp.path().join("conf"));
    layout.image(V1, None, |root| {
        let tree = root.join("srv/mediawiki");
        stage_tree(&tree);
        install(&tree, &db, &conf, &server);
    });
    let en = std::fs::read_to_string(format!("{PACKAGE}/languages/i18n/en.json")).unwrap();
    let image_tagline = format!("From Demo Wiki, as image {V2} has it");
    let v2_en = en.replace(
        "\"tagline\": \"From {{SITENAME}}\"",
        &format!("\"tagline\": \"From {{{{SITENAME}}}}, as image {V2} has it\""),
    );
    assert_ne!(
        v2_en, en,
        "the package's en.json has no tagline message to change"
    );
    t("image V1 built");

    // The node: its group with an unprivileged deployer, the tree synced from the layout.
    let group = GroupGuard::reserve();
    let member = UserGuard::create();
    let node = unique("mwxnode");
    let port = crate::support::web::free_port();
    let w = World::new("");
    w.write_config(&format!(
        "enabled: true\nnode_name: {node}\n\
         code: {{ path: {code}, owner: root, mode: \"2775\" }}\n\
         deployers: {{ group: {g}, gid: {gid}, members: [{m}] }}\n\
         image: {{ source: oci-layout, location: {layout}, path: /srv/mediawiki }}\n\
         service: {{ node_port: {port}, webserver_image: \"docker-registry.discovery.wmnet/restricted/mediawiki-webserver:{V1}\" }}\n",
        code = w.code.display(),
        g = group.name,
        gid = group.gid,
        m = member.name,
        layout = layout.dir.display(),
    ));
    std::fs::set_permissions(w.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    w.run(&["apply", "group", "permissions"]).code(0);
    w.run(&["sync"]).code(0);
    t("synced");
    assert_eq!(
        std::fs::read(w.code.join("includes/Defines.php")).unwrap(),
        std::fs::read(format!("{PACKAGE}/includes/Defines.php")).unwrap()
    );

    // php-fpm with the settings `render` gives; nginx where the routing entry points.
    let objects = w.run(&["render"]);
    objects.code(0);
    let cm = objects
        .stdout
        .split("\n---\n")
        .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
        .find(|o| o["kind"] == "ConfigMap" && o["data"].is_object())
        .expect("render: the php settings ConfigMap");
    let ini_dir = tmp.path().join("php-ini");
    std::fs::create_dir_all(&ini_dir).unwrap();
    for (file, text) in cm["data"].as_object().unwrap() {
        std::fs::write(ini_dir.join(file), text.as_str().unwrap()).unwrap();
    }
    let fpm = PhpFpm::start(&tmp.path().join("php-fpm"), &ini_dir);
    let routing = w.run(&["routing", "--node", &format!("{node}=127.0.0.1")]);
    routing.code(0);
    std::fs::write(&table, &routing.stdout).unwrap();
    let backend = format!("k8s-mw-experimental-{node}");
    assert!(
        routing.stdout.contains(&format!(
            "[\"{backend}\"] = {{ host = \"127.0.0.1\", port = {port} }},"
        )),
        "{}",
        routing.stdout
    );
    let nginx = Nginx::start(&tmp.path().join("nginx"), port, &w.code, &fpm.socket);
    t("php-fpm and nginx up");
    let xwd = format!("backend={backend}; log");
    let routed = [("X-Wikimedia-Debug", xwd.as_str())];
    let logs = || {
        format!(
            "\n--- traffic server\n{}\n--- php-fpm\n{}\n--- nginx\n{}",
            ats.logs(&ats_dir),
            fpm.daemon.log_text(),
            std::fs::read_to_string(tmp.path().join("nginx/nginx-error.log")).unwrap_or_default()
        )
    };

    // With the header: the node's MediaWiki. Without it, or naming another backend: not.
    let info = siteinfo(ats.port, &routed);
    assert_eq!(
        generator(&info),
        format!("MediaWiki {version}"),
        "{logs}",
        logs = logs()
    );
    assert_eq!(info["query"]["general"]["sitename"], "Demo Wiki");
    assert_eq!(tagline(&info), "From Demo Wiki");
    for headers in [
        &[][..],
        &[(
            "X-Wikimedia-Debug",
            "backend=k8s-mw-experimental-someone-else",
        )][..],
        &[("X-Wikimedia-Debug", "profile; log")][..],
    ] {
        let r = get(
            ats.port,
            "/api.php?action=query&meta=siteinfo&format=json",
            headers,
        )
        .unwrap();
        assert_eq!(r.body, format!("{PRODUCTION}\n"), "{headers:?}");
    }
    // WMF's older form: the whole header is the backend's name.
    assert_eq!(
        generator(&siteinfo(ats.port, &[("X-Wikimedia-Debug", &backend)])),
        format!("MediaWiki {version}")
    );
    t("routing checked");

    // A deployer (not root) edits a core file with write-and-rename: the next routed request
    // runs it, though opcache had compiled the old one.
    let edited = format!("{version}-{}", member.name);
    let defines = w.code.join("includes/Defines.php");
    member
        .run(&[
            "sed",
            "-i",
            &format!("s/'MW_VERSION', '{version}'/'MW_VERSION', '{edited}'/"),
            defines.to_str().unwrap(),
        ])
        .code(0);
    assert_eq!(
        generator(&siteinfo(ats.port, &routed)),
        format!("MediaWiki {edited}"),
        "{}",
        logs()
    );
    t("deployer's edit served");

    // A new image: the edit stays, the image's own change is served.
    add_layer(
        &layout.dir,
        V1,
        V2,
        "srv/mediawiki/languages/i18n/en.json",
        v2_en.as_bytes(),
    );
    w.run(&["sync"]).code(0);
    let info = siteinfo(ats.port, &routed);
    assert_eq!(generator(&info), format!("MediaWiki {edited}"));
    assert_eq!(tagline(&info), image_tagline, "{}", logs());
    t("new image synced");

    // The engineer's browser, with the X-Wikimedia-Debug extension, loads the Main Page: what
    // it rendered carries the edit and the new image's message. Without it: production.
    let page = format!("{server}/index.php?title=Main_Page");
    let browser = Browser::new(&tmp.path().join("chromium")).with_debug_header(&server, &xwd);
    let dom = browser.dump_dom(&page);
    let seen = dom.contains(&format!("content=\"MediaWiki {edited}\""))
        && dom.contains(&image_tagline)
        && dom.contains("Demo Wiki");
    if !seen {
        let dir = artefacts();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("main-page.html"), &dom).unwrap();
        browser.screenshot(&page, &dir.join("main-page.png"));
        panic!(
            "the routed Main Page, as Chromium rendered it, lacks the edit ({edited}) or the \
             image's tagline; DOM and screenshot in {}{}",
            dir.display(),
            logs()
        );
    }
    let plain = Browser::new(&tmp.path().join("chromium")).dump_dom(&page);
    assert!(plain.contains(PRODUCTION), "{plain}");
    let _ = std::fs::remove_dir_all(artefacts());
    t("chromium saw it");

    // reset: the image's Defines.php again, on the next request.
    w.run(&["reset", defines.to_str().unwrap()]).code(0);
    assert_eq!(
        generator(&siteinfo(ats.port, &routed)),
        format!("MediaWiki {version}")
    );
    t("reset");
    drop(nginx);
}

/// The script's rules, in Debian's lua5.1 with a stand-in for tslua's `ts` (as WMF tests its
/// own with busted): the `backend` attribute or the whole header; no header or an unknown name
/// passes on; the table is read again once 10 s old, and a broken one keeps the last good.
#[test]
fn the_routing_script_routes_by_the_table_and_keeps_the_last_good_one() {
    assert!(have("lua5.1"), "lua5.1 is missing: run tests/install-deps");
    let tmp = tempfile::tempdir().unwrap();
    let table = tmp.path().join("routes.table");
    std::fs::write(
        &table,
        "-- a comment, as routing writes it\n[\"k8s-mw-experimental-exp1\"] = { host = \"10.0.0.1\", port = 4456 },\n",
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/trafficserver/mw-experimental-debug-routing.lua");
    let harness = tmp.path().join("harness.lua");
    std::fs::write(
        &harness,
        format!(
            r#"
TS_LUA_REMAP_NO_REMAP, TS_LUA_REMAP_DID_REMAP_STOP, TS_LUA_CONFIG_HTTP_CACHE_HTTP = 0, 1, 7
local now, routed, errors = 1000, nil, 0
ts = {{
  now = function() return now end,
  error = function(m) errors = errors + 1 end,
  client_request = {{
    header = {{}},
    set_url_host = function(h) routed = h end,
    set_url_port = function(p) routed = routed .. ":" .. p end,
  }},
  http = {{ config_int_set = function() end }},
}}
dofile({script:?})
assert(__init__({{[0] = "script", {table:?}}}) == 0)
local function ask(xwd)
  routed = nil
  ts.client_request.header["X-Wikimedia-Debug"] = xwd
  local rc = do_remap()
  return tostring(rc) .. " " .. tostring(routed)
end
print(ask("backend=k8s-mw-experimental-exp1; profile"))
print(ask("k8s-mw-experimental-exp1"))
print(ask(nil))
print(ask("backend=k8s-mw-experimental-exp2"))
local f = io.open({table:?}, "w")
f:write('["k8s-mw-experimental-exp2"] = {{ host = "10.0.0.2", port = 4456 }},\n')
f:close()
print(ask("backend=k8s-mw-experimental-exp2"))
now = now + 11
print(ask("backend=k8s-mw-experimental-exp2"), ask("backend=k8s-mw-experimental-exp1"))
f = io.open({table:?}, "w") f:write('["x"] = {{ host = os.exit(3) }},\n') f:close()
now = now + 11
print(ask("backend=k8s-mw-experimental-exp2"), errors)
"#,
            script = script.display().to_string(),
            table = table.display().to_string(),
        ),
    )
    .unwrap();
    assert_eq!(
        sh(Command::new("lua5.1").arg(&harness)),
        "1 10.0.0.1:4456\n1 10.0.0.1:4456\n0 nil\n0 nil\n0 nil\n\
         1 10.0.0.2:4456\t0 nil\n1 10.0.0.2:4456\t1\n"
    );
}
