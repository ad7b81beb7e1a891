//! A state-machine test of `sync`: random histories checked against a simple model.
//!
//! Hand-written scenarios cover the flows we thought of; this covers the interleavings we did
//! not. Each case builds a real world (a temporary tree, a real image source: a plain directory
//! or an OCI layout built with umoci) and runs a random sequence of steps: a new image that
//! adds, changes and deletes files, symlinks and directories (and turns one into another); an
//! engineer (a non-root deployer, through `setpriv`) who edits, creates, deletes, chmods and
//! replaces entries by symlinks or directories; `sync`, `sync --force`, `reset PATH`, and a
//! `sync` SIGKILLed at a random step (`MW_EXPERIMENTAL_TEST_KILL_AFTER`). After every step:
//!
//! * every engineer change is live or in a backup, byte for byte;
//! * after a completed run, every path the engineer never touched (nor an ancestor or a
//!   descendant of it) equals the newest synced image, and `diff` lists exactly the touched
//!   paths whose live state differs from the image (nothing else);
//! * nothing outside the tree changed (inode, mode, ctime of every entry there);
//! * no temporary file is left after a completed run.
//!
//! The model never predicts how `sync` resolves a conflict, only what must hold whatever it
//! does, so it cannot drift from the implementation's choices, only catch broken promises.
//! CI runs a fixed seed and a bounded number of cases; `tests/sync-model-long` runs more
//! (`MWX_MODEL_SEED`, `MWX_MODEL_CASES`). Failing cases shrink to a minimal history, are saved
//! in `tests/it/sync_model.regressions` (replayed first on every run), and are also pinned as
//! named tests below. This test never writes outside its temporary directories, except
//! through the temporary user and group it creates and deletes. It is one file of more than
//! 500 lines on purpose: the generators, the world and the invariants are one model, and are
//! read together.

use crate::support::perm::{snapshot as inodes, GroupGuard, Inode, UserGuard};
use crate::support::*;
use proptest::prelude::*;
use proptest::test_runner::{
    Config as PtConfig, FileFailurePersistence, RngAlgorithm, TestCaseError, TestError, TestRng,
    TestRunner,
};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The paths both the image and the engineer use: few, so that they collide.
const PATHS: &[&str] = &["a", "b", "d", "d/x", "d/y", "d/e", "d/e/z", "f"];
/// Symlink targets; `@OUT` is replaced by the absolute path of a directory outside the tree.
const TARGETS: &[&str] = &["a", "d", "../../outside", "@OUT", "nowhere/x"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum E {
    File(String, bool),
    Link(String),
    Dir,
    Other,
}

#[derive(Clone, Debug)]
enum ImgOp {
    Put(usize, bool),
    Link(usize, usize),
    Mkdir(usize),
    Del(usize),
}

#[derive(Clone, Debug)]
enum EngOp {
    /// Write in place (`>`), or to a new file renamed over the old one (an editor's way).
    Write(usize, bool),
    Delete(usize),
    Chmod(usize, bool),
    ToLink(usize, usize),
    ToDir(usize),
}

#[derive(Clone, Debug)]
enum Op {
    Image(Vec<ImgOp>),
    Eng(EngOp),
    Sync,
    Force,
    Kill { after: u32, force: bool },
    Reset(usize),
}

fn img_op() -> impl Strategy<Value = ImgOp> {
    let p = 0..PATHS.len();
    prop_oneof![
        4 => (p.clone(), any::<bool>()).prop_map(|(p, x)| ImgOp::Put(p, x)),
        1 => (p.clone(), 0..TARGETS.len()).prop_map(|(p, t)| ImgOp::Link(p, t)),
        1 => p.clone().prop_map(ImgOp::Mkdir),
        2 => p.prop_map(ImgOp::Del),
    ]
}

fn eng_op() -> impl Strategy<Value = EngOp> {
    let p = 0..PATHS.len();
    prop_oneof![
        4 => (p.clone(), any::<bool>()).prop_map(|(p, r)| EngOp::Write(p, r)),
        2 => p.clone().prop_map(EngOp::Delete),
        1 => (p.clone(), any::<bool>()).prop_map(|(p, x)| EngOp::Chmod(p, x)),
        1 => (p.clone(), 0..TARGETS.len()).prop_map(|(p, t)| EngOp::ToLink(p, t)),
        1 => p.prop_map(EngOp::ToDir),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(img_op(), 1..5).prop_map(Op::Image),
        5 => eng_op().prop_map(Op::Eng),
        3 => Just(Op::Sync),
        1 => Just(Op::Force),
        2 => (1u32..40, any::<bool>()).prop_map(|(after, force)| Op::Kill { after, force }),
        1 => (0..PATHS.len()).prop_map(Op::Reset),
    ]
}

/// A case: which source, the first image, and the history after the first sync.
fn case() -> impl Strategy<Value = (bool, Vec<ImgOp>, Vec<Op>)> {
    (
        any::<bool>(),
        prop::collection::vec(img_op(), 2..8),
        prop::collection::vec(op(), 1..14),
    )
}

fn under(p: &str, anc: &str) -> bool {
    p.len() > anc.len() && p.starts_with(anc) && p.as_bytes()[anc.len()] == b'/'
}

fn parent(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| &p[..i])
}

/// The image model: a consistent tree (every entry's ancestors are directories).
fn apply_img(img: &mut BTreeMap<String, E>, op: &ImgOp, n: u32, out: &str) {
    let set = |img: &mut BTreeMap<String, E>, p: &str, e: E| {
        // Ancestors become directories (replacing what was there, with its subtree).
        let mut anc = Vec::new();
        let mut q = p;
        while let Some(a) = parent(q) {
            anc.push(a.to_string());
            q = a;
        }
        for a in anc.iter().rev() {
            if img.get(a) != Some(&E::Dir) {
                img.retain(|k, _| k != a && !under(k, a));
                img.insert(a.clone(), E::Dir);
            }
        }
        if e == E::Dir && img.get(p) == Some(&E::Dir) {
            return;
        }
        img.retain(|k, _| k != p && !under(k, p));
        img.insert(p.to_string(), e);
    };
    match *op {
        ImgOp::Put(i, x) => set(img, PATHS[i], E::File(format!("i{n}:{}\n", PATHS[i]), x)),
        ImgOp::Link(i, t) => set(img, PATHS[i], E::Link(TARGETS[t].replace("@OUT", out))),
        ImgOp::Mkdir(i) => set(img, PATHS[i], E::Dir),
        ImgOp::Del(i) => {
            let p = PATHS[i];
            img.retain(|k, _| k != p && !under(k, p));
        }
    }
}

fn write_tree(root: &Path, img: &BTreeMap<String, E>) {
    if root.exists() {
        std::fs::remove_dir_all(root).unwrap();
    }
    std::fs::create_dir_all(root).unwrap();
    for (p, e) in img {
        let path = root.join(p);
        match e {
            E::Dir => std::fs::create_dir(&path).unwrap(),
            E::Link(t) => std::os::unix::fs::symlink(t, &path).unwrap(),
            E::File(c, x) => {
                std::fs::write(&path, c).unwrap();
                let mode = if *x { 0o755 } else { 0o644 };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            E::Other => unreachable!(),
        }
    }
}

/// What is at `rel` in the tree, never following a symlink on the way (as `sync` sees it).
fn live(code: &Path, rel: &str) -> Option<E> {
    let mut cur = code.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, c) in parts.iter().enumerate() {
        cur.push(c);
        let md = std::fs::symlink_metadata(&cur).ok()?;
        let last = i + 1 == parts.len();
        if !last {
            if !md.is_dir() {
                return None;
            }
            continue;
        }
        return Some(if md.file_type().is_symlink() {
            E::Link(std::fs::read_link(&cur).unwrap().display().to_string())
        } else if md.is_dir() {
            E::Dir
        } else if md.is_file() {
            E::File(
                String::from_utf8_lossy(&std::fs::read(&cur).unwrap()).into_owned(),
                md.permissions().mode() & 0o100 != 0,
            )
        } else {
            E::Other
        });
    }
    None
}

/// One world of a case: the tree, its image source, the deployer, and the model.
struct Case<'a> {
    w: World,
    user: &'a UserGuard,
    oci: bool,
    /// Directory source: the image root; OCI: the umoci bundle's rootfs.
    img_root: PathBuf,
    layout: PathBuf,
    bundle: PathBuf,
    out: PathBuf,
    outside_before: BTreeMap<PathBuf, Inode>,
    n_img: u32,
    n_edit: u32,
    /// The newest published image, and the one the last completed sync synced.
    newest: BTreeMap<String, E>,
    synced: BTreeMap<String, E>,
    /// Engineer's changes not yet reconciled: path -> what they made it (None: deleted).
    eng: BTreeMap<String, Option<E>>,
    /// A run was killed and no sync has completed since.
    dirty: bool,
    log: Vec<String>,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

impl<'a> Case<'a> {
    fn new(oci: bool, g: &GroupGuard, user: &'a UserGuard) -> Case<'a> {
        let w = World::new("");
        let out = w.path().join("outside");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::write(out.join("keep.txt"), "precious\n").unwrap();
        std::fs::write(out.join("a"), "outside a\n").unwrap();
        std::fs::create_dir_all(w.path().join("srv")).unwrap();
        std::fs::write(w.path().join("srv/sibling.txt"), "sibling\n").unwrap();
        let layout = w.path().join("layout");
        let bundle = w.path().join("bundle");
        let img_root = if oci {
            sh(Command::new("umoci")
                .arg("init")
                .arg("--layout")
                .arg(&layout));
            let base = format!("{}:base", layout.display());
            sh(Command::new("umoci").args(["new", "--image", &base]));
            sh(Command::new("umoci")
                .args(["unpack", "--image", &base])
                .arg(&bundle));
            // Only the published tags compete for "newest".
            sh(Command::new("umoci").args(["rm", "--image", &base]));
            bundle.join("rootfs")
        } else {
            w.path().join("img")
        };
        let source = if oci {
            format!("oci-layout, location: {}", layout.display())
        } else {
            format!("directory, location: {}", img_root.display())
        };
        w.write_config(&format!(
            "enabled: true\ncode: {{ path: {}, owner: root, mode: \"2775\" }}\n\
             deployers: {{ group: {}, gid: {}, members: [{}] }}\n\
             image: {{ source: {source} }}\n",
            w.code.display(),
            g.name,
            g.gid,
            user.name
        ));
        let mut outside_before = inodes(&out);
        outside_before.insert(
            w.path().join("srv/sibling.txt"),
            crate::support::perm::inode(&w.path().join("srv/sibling.txt")),
        );
        Case {
            w,
            user,
            oci,
            img_root,
            layout,
            bundle,
            out,
            outside_before,
            n_img: 0,
            n_edit: 0,
            newest: BTreeMap::new(),
            synced: BTreeMap::new(),
            eng: BTreeMap::new(),
            dirty: false,
            log: Vec::new(),
        }
    }

    fn publish(&mut self, ops: &[ImgOp]) {
        self.n_img += 1;
        let out = self.out.display().to_string();
        for o in ops {
            apply_img(&mut self.newest, o, self.n_img, &out);
        }
        let t = self.img_root.join("srv/mediawiki");
        write_tree(&t, &self.newest);
        std::fs::create_dir_all(self.img_root.join("etc")).unwrap();
        std::fs::write(
            self.img_root.join("etc/not-synced"),
            format!("{}\n", self.n_img),
        )
        .unwrap();
        if self.oci {
            let tag = format!(
                "{}:2026-11-20-101010-publish-{}",
                self.layout.display(),
                self.n_img
            );
            sh(Command::new("umoci")
                .args(["repack", "--refresh-bundle", "--image", &tag])
                .arg(&self.bundle));
        }
    }

    fn eng_run(&self, script: &str, args: &[&str]) -> bool {
        let mut argv = vec!["sh", "-c", script, "sh"];
        argv.extend_from_slice(args);
        self.user.run(&argv).code == 0
    }

    /// Live states of `p` and everything below it (in the path universe).
    fn subtree(&self, p: &str) -> Vec<(String, Option<E>)> {
        PATHS
            .iter()
            .filter(|q| **q == p || under(q, p))
            .map(|q| (q.to_string(), live(&self.w.code, q)))
            .collect()
    }

    fn engineer(&mut self, op: &EngOp) {
        self.n_edit += 1;
        let p = match op {
            EngOp::Write(i, _)
            | EngOp::Delete(i)
            | EngOp::Chmod(i, _)
            | EngOp::ToLink(i, _)
            | EngOp::ToDir(i) => PATHS[*i],
        };
        // The engineer works on real directories only: writing through a symlink is their
        // own doing, not sync's, and would blur "nothing outside changed".
        let mut q = p;
        while let Some(a) = parent(q) {
            if live(&self.w.code, a) != Some(E::Dir) {
                return;
            }
            q = a;
        }
        if !self.w.code.is_dir() {
            return;
        }
        let abs = self.w.code.join(p).display().to_string();
        let before = self.subtree(p);
        let content = format!("e{}:{p}\n", self.n_edit);
        match op {
            EngOp::Write(_, rename) => {
                if !matches!(live(&self.w.code, p), None | Some(E::File(..))) {
                    return;
                }
                if *rename {
                    self.eng_run(
                        r#"printf %s "$1" > "$2.new" && mv -f "$2.new" "$2""#,
                        &[&content, &abs],
                    );
                } else {
                    self.eng_run(r#"printf %s "$1" > "$2""#, &[&content, &abs]);
                }
            }
            EngOp::Delete(_) => {
                self.eng_run(r#"rm -rf -- "$1""#, &[&abs]);
            }
            EngOp::Chmod(_, x) => {
                if !matches!(live(&self.w.code, p), Some(E::File(..))) {
                    return;
                }
                self.eng_run(
                    r#"chmod "$1" -- "$2""#,
                    &[if *x { "+x" } else { "-x" }, &abs],
                );
            }
            EngOp::ToLink(_, t) => {
                let t = TARGETS[*t].replace("@OUT", &self.out.display().to_string());
                self.eng_run(r#"rm -rf -- "$2" && ln -s -- "$1" "$2""#, &[&t, &abs]);
            }
            EngOp::ToDir(_) => {
                self.eng_run(r#"rm -rf -- "$1" && mkdir -- "$1""#, &[&abs]);
            }
        }
        for ((q, b), (_, a)) in before.iter().zip(self.subtree(p)) {
            if *b != a {
                self.eng.insert(q.clone(), a);
            }
        }
    }

    fn sync(&mut self, args: &[&str], kill: Option<u32>) -> Result<(), TestCaseError> {
        let mut cmd = self.w.cmd();
        cmd.arg("sync").args(args);
        if let Some(n) = kill {
            cmd.env("MW_EXPERIMENTAL_TEST_KILL_AFTER", n.to_string());
        }
        let o = cmd.output().unwrap();
        if kill.is_some() && o.status.signal() == Some(9) {
            self.dirty = true;
            return Ok(());
        }
        if !o.status.success() {
            return Err(fail(format!(
                "sync {args:?} failed: {}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            )));
        }
        self.synced = self.newest.clone();
        self.dirty = false;
        Ok(())
    }

    fn reset(&mut self, p: &str) -> Result<(), TestCaseError> {
        let o = self
            .w
            .run(&["reset", &self.w.code.join(p).display().to_string()]);
        match o.code {
            0 => Ok(()),
            // The image last synced may be gone (a directory source is rewritten in place),
            // or the path may be in neither: a clear error, then the invariants still hold.
            2 if o.stderr.contains("reset:") || o.stderr.contains("error") => Ok(()),
            _ => Err(fail(format!(
                "reset {p}: exit {}\n{}{}",
                o.code, o.stdout, o.stderr
            ))),
        }
    }

    /// Paths the engineer touched: an unreconciled change at the path, an ancestor, or below.
    fn touched(&self, p: &str) -> bool {
        self.eng
            .keys()
            .any(|q| q == p || under(p, q) || under(q, p))
    }

    fn backed_up(&self, p: &str, e: &E) -> bool {
        let Ok(rd) = std::fs::read_dir(self.w.state_dir.join("backups")) else {
            return false;
        };
        rd.flatten().any(|b| {
            let path = b.path().join(p);
            match e {
                E::File(c, _) => std::fs::read(&path).is_ok_and(|d| d == c.as_bytes()),
                E::Link(t) => std::fs::read_link(&path).is_ok_and(|l| l == Path::new(t)),
                _ => true,
            }
        })
    }

    fn check(&mut self, step: &str) -> Result<(), TestCaseError> {
        self.log.push(step.to_string());
        let ctx = || format!("after {}", self.log.join(" ; "));
        // Nothing outside the tree changed.
        let mut now = inodes(&self.out);
        now.insert(
            self.w.path().join("srv/sibling.txt"),
            crate::support::perm::inode(&self.w.path().join("srv/sibling.txt")),
        );
        if now != self.outside_before {
            return Err(fail(format!(
                "something outside the tree changed {}:\n{:?}\n{:?}",
                ctx(),
                self.outside_before,
                now
            )));
        }
        // Every engineer change is live or in a backup, byte for byte.
        for (p, e) in &self.eng {
            let Some(e) = e else { continue };
            if matches!(e, E::Dir | E::Other) {
                continue;
            }
            let l = live(&self.w.code, p);
            let same = match (e, &l) {
                (E::File(c, _), Some(E::File(lc, _))) => c == lc,
                _ => l.as_ref() == Some(e),
            };
            if !same && !self.backed_up(p, e) {
                return Err(fail(format!(
                    "the engineer's {p} ({e:?}) is neither live ({l:?}) nor in a backup {}",
                    ctx()
                )));
            }
        }
        if self.dirty {
            return Ok(());
        }
        // Reconcile: a path whose live state equals the synced image is no longer an edit.
        let code = self.w.code.clone();
        let synced = self.synced.clone();
        // (Also its ancestors: a directory kept for an edit below it stays the edit's mark.)
        let differs = |p: &str| live(&code, p) != synced.get(p).cloned();
        self.eng.retain(|p, _| {
            let mut q = p.as_str();
            let mut any = differs(q);
            while let Some(a) = parent(q) {
                any |= differs(a);
                q = a;
            }
            any
        });
        // Untouched paths equal the newest synced image.
        for p in PATHS {
            if self.touched(p) {
                continue;
            }
            let l = live(&self.w.code, p);
            let want = self.synced.get(*p).cloned();
            if l != want {
                return Err(fail(format!(
                    "{p} was never touched by the engineer but is {l:?}, the image has {want:?} {}",
                    ctx()
                )));
            }
        }
        // No temp file left, and the journal is done.
        let mut stack = vec![self.w.code.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".mwx-tmp") {
                    return Err(fail(format!("temp file {:?} left {}", e.path(), ctx())));
                }
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        let journal = self.w.state_dir.join("sync/journal");
        if std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0) {
            return Err(fail(format!("the journal is not empty {}", ctx())));
        }
        // diff lists exactly the touched paths that differ from the image.
        let d = self.w.run(&["--json", "diff"]);
        if d.code != 0 && d.code != 1 {
            return Err(fail(format!(
                "diff exit {}: {} {}",
                d.code,
                d.stderr,
                ctx()
            )));
        }
        let v = d.json();
        let mut listed = Vec::new();
        for k in ["modified", "added", "deleted"] {
            for p in v[k].as_array().unwrap() {
                listed.push(p.as_str().unwrap().to_string());
            }
        }
        for p in &listed {
            if !self.touched(p) {
                return Err(fail(format!(
                    "diff lists {p}, which nobody edited: {v} {}",
                    ctx()
                )));
            }
        }
        for p in self.eng.keys() {
            let l = live(&self.w.code, p);
            let want = self.synced.get(p);
            let relevant = matches!(l, Some(E::File(..) | E::Link(_)))
                || matches!(want, Some(E::File(..) | E::Link(_)));
            if relevant && !listed.iter().any(|q| q == p || under(p, q)) {
                return Err(fail(format!(
                    "diff does not list the edit of {p} (live {l:?}, image {want:?}): {v} {}",
                    ctx()
                )));
            }
        }
        if (d.code == 1) == listed.is_empty() {
            return Err(fail(format!("diff exit {} with {v} {}", d.code, ctx())));
        }
        Ok(())
    }
}

static STEPS: AtomicU64 = AtomicU64::new(0);

fn run_case(
    g: &GroupGuard,
    user: &UserGuard,
    (oci, first, ops): &(bool, Vec<ImgOp>, Vec<Op>),
) -> Result<(), TestCaseError> {
    let mut c = Case::new(*oci, g, user);
    c.publish(first);
    c.sync(&[], None)?;
    c.check("first sync")?;
    for op in ops {
        STEPS.fetch_add(1, Ordering::Relaxed);
        match op {
            Op::Image(ops) => c.publish(ops),
            Op::Eng(e) => c.engineer(e),
            Op::Sync => c.sync(&[], None)?,
            Op::Force => c.sync(&["--force"], None)?,
            Op::Kill { after, force } => {
                let args: &[&str] = if *force { &["--force"] } else { &[] };
                c.sync(args, Some(*after))?
            }
            Op::Reset(i) => c.reset(PATHS[*i])?,
        }
        c.check(&format!("{op:?}"))?;
    }
    // Finally a plain sync must complete and leave the model's promises.
    c.sync(&[], None)?;
    c.check("final sync")?;
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_histories_never_lose_an_edit_nor_touch_outside() {
    let g = GroupGuard::create();
    let user = UserGuard::create();
    sh(Command::new("gpasswd").args(["-a", &user.name, &g.name]));
    let seed = env_u64("MWX_MODEL_SEED", 12);
    let cases = env_u64("MWX_MODEL_CASES", 120) as u32;
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = PtConfig {
        cases,
        max_shrink_iters: 400,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/it/sync_model.regressions",
        ))),
        ..PtConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let started = std::time::Instant::now();
    let result = runner.run(&case(), |c| run_case(&g, &user, &c));
    eprintln!(
        "sync model: seed {seed}, {cases} cases, {} steps, {:.1}s",
        STEPS.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, case)) => panic!("minimal failing history {case:#?}\n{why}"),
        Err(e) => panic!("{e}"),
    }
}

/// Replays one history (a shrunk failure found by the random test) as its own test.
fn replay(oci: bool, first: Vec<ImgOp>, ops: Vec<Op>) {
    let g = GroupGuard::create();
    let user = UserGuard::create();
    sh(Command::new("gpasswd").args(["-a", &user.name, &g.name]));
    if let Err(e) = run_case(&g, &user, &(oci, first, ops)) {
        panic!("{e}");
    }
}

/// Found by the random test: an image with nothing at `image.path` left an empty manifest, and
/// `diff` then said the tree was never synced (exit 2) instead of listing the engineer's file.
#[test]
fn regression_diff_after_syncing_an_empty_image_lists_edits() {
    use ImgOp::*;
    replay(
        false,
        vec![Put(2, false)],
        vec![Op::Image(vec![Del(2)]), Op::Eng(EngOp::Write(0, false))],
    );
}

/// Found by the random test: a sync killed after removing `d/y` (its image turned `d` into a
/// file), then a newer image with `d/y` as before: the manifest still had `d/y`, so the next
/// sync saw "unchanged in the image" and never recreated it, and `diff` called it deleted by an
/// engineer. The engine now journals each step's entry; recovery records finished steps.
#[test]
fn regression_killed_sync_then_another_image_completes_the_tree() {
    use ImgOp::*;
    replay(
        false,
        vec![Mkdir(4), Put(0, false)],
        vec![
            Op::Image(vec![Put(2, false)]),
            Op::Kill {
                after: 1,
                force: false,
            },
            Op::Image(vec![Mkdir(4)]),
        ],
    );
}

/// Found by `tests/sync-model-long` (seed 5017, after the manifest became a stream): a sync
/// killed after it removed `d/e/z` and `d/e` and put a file at `d`; the next image has `d/e/z`
/// again. Recovery skipped the journaled removals below the file `d` (it could not look there),
/// so the manifest still had the directory `d/e`; the next sync took it as unchanged and never
/// created it. A removal below a file or symlink is now recorded as done.
#[test]
fn regression_killed_sync_that_turned_a_directory_into_a_file_then_back() {
    use ImgOp::*;
    replay(
        false,
        vec![Put(6, false), Put(0, false)],
        vec![
            Op::Image(vec![Put(0, false)]),
            Op::Sync,
            Op::Image(vec![Put(7, false), Put(2, false)]),
            Op::Kill {
                after: 5,
                force: false,
            },
            Op::Image(vec![Put(6, false)]),
        ],
    );
}

/// Found by `tests/sync-model-long` (seed 6002): an engineer creates `d/x`, the next image has
/// `d/x` too, and sync keeps the engineer's file; the engineer then removes `d`. `diff` did not
/// list `d/x` (the manifest had no entry for it: sync had never written it), though the tree now
/// lacks a file the image has. A kept file of the engineer's where the image has one is now in
/// the manifest with the image's entry: `diff` shows it modified, then deleted.
#[test]
fn regression_engineer_file_the_image_then_also_has_stays_in_diff_when_deleted() {
    use ImgOp::*;
    replay(
        false,
        vec![Put(0, false), Put(4, false)],
        vec![
            Op::Eng(EngOp::Write(3, false)),
            Op::Image(vec![Put(3, false)]),
            Op::Sync,
            Op::Eng(EngOp::Delete(2)),
        ],
    );
}

/// Found by the random test (a model fix, not a sync bug): a directory the image dropped but
/// that held an engineer's symlink stays after `reset` removes the symlink below it; it is
/// then an engineer's leftover (`diff` lists it as added), never silently deleted.
#[test]
fn regression_directory_kept_for_an_edit_stays_after_reset_below_it() {
    use ImgOp::*;
    replay(
        false,
        vec![Mkdir(5), Put(0, false)],
        vec![
            Op::Image(vec![Del(2)]),
            Op::Eng(EngOp::ToLink(6, 0)),
            Op::Sync,
            Op::Reset(5),
        ],
    );
}
