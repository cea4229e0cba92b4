//! Payloads trimmed from real deliveries of each provider (the fields Maestro reads kept
//! as the providers send them).

use super::*;
use maestro_api::SecretKeyRef;

const GITHUB_PUSH: &str = r#"{
  "ref": "refs/heads/main",
  "before": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
  "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
  "created": false, "deleted": false, "forced": false,
  "repository": {
    "id": 186853002, "name": "app", "full_name": "Acme/App",
    "html_url": "https://github.com/Acme/App",
    "url": "https://github.com/Acme/App",
    "git_url": "git://github.com/Acme/App.git",
    "ssh_url": "git@github.com:Acme/App.git",
    "clone_url": "https://github.com/Acme/App.git",
    "default_branch": "main"
  },
  "pusher": {"name": "octocat", "email": "octocat@github.com"},
  "sender": {"login": "octocat", "id": 1},
  "commits": [
    {"id": "9049f1265b7d61be4a8904a9a27120d2064dab3b", "message": "docs",
     "author": {"name": "Mona", "email": "mona@github.com", "username": "mona"},
     "added": [], "removed": [], "modified": ["README.md"]},
    {"id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", "message": "Fix the build\n\nLonger text\n",
     "author": {"name": "The Octocat", "email": "octocat@github.com", "username": "octocat"},
     "added": ["src/new.rs"], "removed": [], "modified": ["src/main.rs"]}
  ],
  "head_commit": {"id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", "message": "Fix the build\n\nLonger text\n",
     "author": {"name": "The Octocat", "email": "octocat@github.com", "username": "octocat"},
     "added": ["src/new.rs"], "removed": [], "modified": ["src/main.rs"]}
}"#;

const GITLAB_PUSH: &str = r#"{
  "object_kind": "push", "event_name": "push",
  "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
  "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
  "ref": "refs/heads/master", "ref_protected": true,
  "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
  "user_name": "John Smith", "user_username": "jsmith",
  "project": {
    "id": 15, "name": "Diaspora",
    "web_url": "http://example.com/mike/diaspora",
    "git_ssh_url": "git@example.com:mike/diaspora.git",
    "git_http_url": "http://example.com/mike/diaspora.git",
    "path_with_namespace": "mike/diaspora"
  },
  "repository": {
    "name": "Diaspora", "url": "git@example.com:mike/diaspora.git",
    "homepage": "http://example.com/mike/diaspora",
    "git_http_url": "http://example.com/mike/diaspora.git",
    "git_ssh_url": "git@example.com:mike/diaspora.git"
  },
  "commits": [
    {"id": "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327", "message": "Update Catalan translation to e38cb41.",
     "author": {"name": "Jordi Mallach", "email": "jordi@softcatala.org"},
     "added": ["CHANGELOG"], "modified": ["app/controller/application.rb"], "removed": []},
    {"id": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "message": "fixed readme",
     "author": {"name": "GitLab dev user", "email": "gitlabdev@dv6700.(none)"},
     "added": ["CHANGELOG"], "modified": ["app/controller/application.rb"], "removed": []}
  ],
  "total_commits_count": 4
}"#;

const GITEA_TAG_PUSH: &str = r#"{
  "ref": "refs/tags/v1.2.0",
  "before": "0000000000000000000000000000000000000000",
  "after": "28e1879d029cb852e4844d9c718537df08844e03",
  "compare_url": "",
  "commits": [],
  "head_commit": {"id": "28e1879d029cb852e4844d9c718537df08844e03", "message": "release 1.2.0\n",
     "author": {"name": "user1", "email": "user1@example.com", "username": "user1"},
     "added": [], "removed": [], "modified": []},
  "repository": {
    "id": 1, "full_name": "gitea/webhooks",
    "html_url": "http://localhost:3000/gitea/webhooks",
    "ssh_url": "ssh://gitea@localhost:2222/gitea/webhooks.git",
    "clone_url": "http://localhost:3000/gitea/webhooks.git"
  },
  "pusher": {"id": 1, "login": "gitea", "username": "gitea"},
  "sender": {"id": 1, "login": "gitea", "username": "gitea"}
}"#;

fn trigger(repository: &str) -> GitTrigger {
    GitTrigger {
        repository: repository.into(),
        branches: vec![],
        tags: vec![],
        paths: vec![],
        secret_ref: SecretKeyRef {
            name: "hook".into(),
            key: "secret".into(),
        },
        params: BTreeMap::new(),
    }
}

#[test]
fn reads_a_github_push() {
    let push = parse(GITHUB_PUSH.as_bytes()).unwrap();
    assert_eq!(push.git_ref, "refs/heads/main");
    assert_eq!(push.commit_sha, "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c");
    assert_eq!(push.author, "The Octocat");
    assert_eq!(push.message, "Fix the build\n\nLonger text");
    assert_eq!(push.clone_url, "https://github.com/Acme/App.git");
    assert!(!push.deleted);
    let paths: Vec<&str> = push.changed_paths.iter().map(String::as_str).collect();
    assert_eq!(paths, ["README.md", "src/main.rs", "src/new.rs"]);
}

#[test]
fn reads_a_gitlab_push() {
    let push = parse(GITLAB_PUSH.as_bytes()).unwrap();
    assert_eq!(push.commit_sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    assert_eq!(push.author, "GitLab dev user");
    assert_eq!(push.message, "fixed readme");
    assert_eq!(push.clone_url, "http://example.com/mike/diaspora.git");
    assert!(same_repository(
        &trigger("git@example.com:mike/diaspora.git"),
        &push
    ));
    assert!(same_repository(
        &trigger("http://EXAMPLE.com/mike/diaspora/"),
        &push
    ));
}

#[test]
fn reads_a_gitea_tag_push() {
    let push = parse(GITEA_TAG_PUSH.as_bytes()).unwrap();
    assert_eq!(push.git_ref, "refs/tags/v1.2.0");
    assert_eq!(push.author, "user1");
    assert!(push.changed_paths.is_empty());
    let mut t = trigger("http://localhost:3000/gitea/webhooks");
    assert_eq!(
        check_ref_and_paths(&t, &push),
        Err(Mismatch::Ref("refs/tags/v1.2.0".into())),
        "tags start nothing unless listed"
    );
    t.tags = vec!["v*".into()];
    t.paths = vec!["src/**".into()];
    assert_eq!(
        check_ref_and_paths(&t, &push),
        Ok(()),
        "paths do not apply to tags"
    );
}

#[test]
fn malformed_payloads_are_refused_with_a_reason() {
    assert!(parse(b"{not json").unwrap_err().contains("malformed"));
    assert!(parse(br#"{"after": "abc"}"#).unwrap_err().contains("ref"));
    assert!(
        parse(br#"{"ref": "refs/heads/x"}"#)
            .unwrap_err()
            .contains("no repository URL")
    );
}

#[test]
fn a_deleted_ref_is_recognised() {
    let body = GITHUB_PUSH
        .replace("\"deleted\": false", "\"deleted\": true")
        .replace(
            "\"after\": \"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c\"",
            "\"after\": \"0000000000000000000000000000000000000000\"",
        );
    assert!(parse(body.as_bytes()).unwrap().deleted);
}

/// A payload whose `homepage` names another project does not match that project's trigger.
#[test]
fn the_homepage_field_never_matches_a_trigger() {
    let forged = GITLAB_PUSH.replace(
        "\"homepage\": \"http://example.com/mike/diaspora\"",
        "\"homepage\": \"https://github.com/acme/payments\"",
    );
    let push = parse(forged.as_bytes()).unwrap();
    assert!(!same_repository(
        &trigger("https://github.com/acme/payments"),
        &push
    ));
    assert!(same_repository(
        &trigger("http://example.com/mike/diaspora"),
        &push
    ));
}

#[test]
fn repository_urls_normalize_to_host_and_path() {
    for url in [
        "https://github.com/Acme/App",
        "https://github.com/acme/app.git",
        "git@github.com:Acme/App.git",
        "ssh://git@github.com/acme/app",
        "http://user@github.com/acme/app/",
    ] {
        assert_eq!(normalize_repository(url), "github.com/acme/app", "{url}");
    }
    assert_eq!(
        normalize_repository("http://10.0.0.5:8080/repos/app.git"),
        "10.0.0.5:8080/repos/app"
    );
}

#[test]
fn branches_and_paths_filter_pushes() {
    let push = parse(GITHUB_PUSH.as_bytes()).unwrap();
    let mut t = trigger("https://github.com/acme/app");
    assert!(same_repository(&t, &push));
    assert!(!same_repository(
        &trigger("https://github.com/acme/other"),
        &push
    ));
    assert_eq!(
        check_ref_and_paths(&t, &push),
        Ok(()),
        "no patterns: any branch"
    );
    t.branches = vec!["release/*".into()];
    assert_eq!(
        check_ref_and_paths(&t, &push),
        Err(Mismatch::Ref("refs/heads/main".into()))
    );
    t.branches = vec!["release/*".into(), "main".into()];
    t.paths = vec!["docs/**".into()];
    assert_eq!(check_ref_and_paths(&t, &push), Err(Mismatch::Paths));
    t.paths = vec!["docs/**".into(), "src/**".into()];
    assert_eq!(check_ref_and_paths(&t, &push), Ok(()));
    // Only tags listed: branch pushes start nothing.
    let mut tags_only = trigger("https://github.com/acme/app");
    tags_only.tags = vec!["v*".into()];
    assert!(check_ref_and_paths(&tags_only, &push).is_err());
}

#[test]
fn run_params_keep_only_declared_names_plus_the_triggers_own() {
    let push = parse(GITHUB_PUSH.as_bytes()).unwrap();
    let mut t = trigger("https://github.com/acme/app");
    t.params.insert("env".into(), "staging".into());
    let params = run_params(&t, &push, |name| name != "message");
    // The trigger's URL, not the payload's (https://github.com/Acme/App.git).
    assert_eq!(params["repository"], "https://github.com/acme/app");
    assert_eq!(params["ref"], "refs/heads/main");
    assert_eq!(
        params["commitSha"],
        "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
    );
    assert_eq!(params["author"], "The Octocat");
    assert_eq!(params["env"], "staging");
    assert!(!params.contains_key("message"));
}

#[test]
fn providers_by_path_and_event() {
    assert_eq!(Provider::from_path("/hooks/github"), Some(Provider::GitHub));
    assert_eq!(
        Provider::from_path("/hooks/gitlab/"),
        Some(Provider::GitLab)
    );
    assert_eq!(Provider::from_path("/hooks/other"), None);
    assert_eq!(Provider::GitHub.event_kind("push"), EventKind::Push);
    assert_eq!(Provider::GitHub.event_kind("ping"), EventKind::Ping);
    assert_eq!(
        Provider::GitLab.event_kind("Tag Push Hook"),
        EventKind::Push
    );
    assert_eq!(Provider::Gitea.event_kind("issues"), EventKind::Other);
}
