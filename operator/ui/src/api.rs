//! The JSON endpoints: who the user is, one run, the compositions, and the actions
//! (approve or reject a gate, cancel a run, run again, rerun, run a composition). Each
//! works as the request's user; the read-only viewer only reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use maestro_api::decisions::{Decider, Refusal, approval_for};
use maestro_api::{Approval, Composition, CompositionRun, CompositionSpec, Decision, ParamSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::summary::{wire_name, without_managed_fields};
use crate::watch::NamespaceQuery;
use crate::{ApiError, App};

type Answer = Result<Json<Value>, ApiError>;

/// What the page needs to know before its first page: where to look first, who it is
/// served as (the login page when nobody; no action buttons for the read-only viewer),
/// and the dashboard's link.
pub async fn config(State(app): State<Arc<App>>, headers: HeaderMap) -> Json<Value> {
    Json(json!({
        "defaultNamespace": app.default_namespace,
        "session": app.access.session(&headers),
        "login": app.access.has_login(),
        "dashboardUrl": app.dashboard_url,
    }))
}

/// The user, as the API server authenticates them.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub username: String,
    pub groups: Vec<String>,
}

pub async fn whoami(State(app): State<Arc<App>>, headers: HeaderMap) -> Answer {
    let caller = ask_who(&app.access.client_for(&headers)?).await?;
    Ok(Json(json!(caller)))
}

/// Asks the API server who the caller is (a SelfSubjectReview): the only name an
/// Approval's approvedBy may carry.
pub(crate) async fn ask_who(client: &Client) -> Result<Caller, ApiError> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|error| ApiError::kube(error, "asking the API server who you are"))?;
    let user = review.status.and_then(|status| status.user_info);
    let username = user
        .as_ref()
        .and_then(|user| user.username.clone())
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "the API server did not say who you are",
            )
        })?;
    let groups = user.and_then(|user| user.groups).unwrap_or_default();
    Ok(Caller { username, groups })
}

pub(crate) async fn get_run(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<CompositionRun, ApiError> {
    let runs: Api<CompositionRun> = Api::namespaced(client, namespace);
    runs.get_opt(name)
        .await
        .map_err(|error| ApiError::kube(error, &format!("reading compositionrun {name:?}")))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("compositionrun {name:?} not found in namespace {namespace:?}"),
            )
        })
}

pub async fn run(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Answer {
    let run = get_run(app.access.client_for(&headers)?, &namespace, &name).await?;
    Ok(Json(without_managed_fields(run)))
}

pub async fn compositions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<NamespaceQuery>,
) -> Answer {
    let compositions: Api<Composition> = query.api(app.access.client_for(&headers)?);
    let list = compositions
        .list(&ListParams::default())
        .await
        .map_err(|error| ApiError::kube(error, "listing compositions"))?;
    let items: Vec<Value> = list.items.into_iter().map(without_managed_fields).collect();
    Ok(Json(json!(items)))
}

#[derive(Deserialize, Debug)]
pub struct DecideRequest {
    pub step: String,
    pub decision: Decision,
    #[serde(default)]
    pub comment: Option<String>,
}

/// Approves or rejects a gate: creates the Approval `kubectl maestro approve` creates,
/// as the request's user.
pub async fn decide(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Json(request): Json<DecideRequest>,
) -> Answer {
    let client = app.access.client_to_act(&headers)?;
    let run = get_run(client.clone(), &namespace, &name).await?;
    let caller = ask_who(&client).await?;
    let decider = Decider {
        username: &caller.username,
        groups: &caller.groups,
    };
    let (approval, _) = approval_for(
        &run,
        &request.step,
        request.decision,
        &decider,
        request.comment,
    )
    .map_err(|refused| {
        let status = match refused {
            Refusal::NotWaiting(_) => StatusCode::CONFLICT,
            // The operator would ignore this decision (and say why in the run's status);
            // saying so now spares the approver a decision that silently changes nothing.
            Refusal::Ineligible(_) => StatusCode::FORBIDDEN,
            Refusal::NoUid(_) => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, refused.to_string())
    })?;
    let approvals: Api<Approval> = Api::namespaced(client, &namespace);
    let created = approvals
        .create(&PostParams::default(), &approval)
        .await
        .map_err(|error| ApiError::kube(error, "creating the approval"))?;
    let verb = match request.decision {
        Decision::Approve => "approved",
        Decision::Reject => "rejected",
    };
    Ok(Json(json!({
        "approval": created.name_any(),
        "by": caller.username,
        "message": format!("{name}/{} {verb} by {}", request.step, caller.username),
    })))
}

pub async fn cancel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Answer {
    let client = app.access.client_to_act(&headers)?;
    let run = get_run(client.clone(), &namespace, &name).await?;
    if let Some(phase) = run.status.as_ref().map(|status| status.phase)
        && phase.is_finished()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{name} already ended (phase {}); nothing to cancel",
                wire_name(&phase)
            ),
        ));
    }
    let runs: Api<CompositionRun> = Api::namespaced(client, &namespace);
    let cancel = json!({ "spec": { "cancel": true } });
    runs.patch(&name, &PatchParams::default(), &Patch::Merge(&cancel))
        .await
        .map_err(|error| ApiError::kube(error, "requesting the cancel"))?;
    Ok(Json(
        json!({ "message": format!("{name}: cancel requested") }),
    ))
}

/// Starts a new run of the run's composition with the same params (and priority), as
/// the request's user, who is recorded as its starter.
pub async fn run_again(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Answer {
    let client = app.access.client_to_act(&headers)?;
    let run = get_run(client.clone(), &namespace, &name).await?;
    let started = start_like(client, &namespace, &run, None, "starting the run").await?;
    Ok(Json(json!({
        "run": started,
        "message": format!("{started} started with the params of {name}"),
    })))
}

/// Creates, as the client's user (its starter), a run of `run`'s composition with its
/// params and priority: a plain new run, or a rerun of it. Returns the new run's name.
async fn start_like(
    client: Client,
    namespace: &str,
    run: &CompositionRun,
    rerun_of: Option<maestro_api::RerunOf>,
    doing: &str,
) -> Result<String, ApiError> {
    let base = match &rerun_of {
        Some(of) => maestro_api::labels::rerun_name_base(&of.run),
        None => run.spec.composition.clone(),
    };
    let spec = maestro_api::CompositionRunSpec {
        composition: run.spec.composition.clone(),
        params: run.spec.params.clone(),
        cancel: false,
        priority: run.spec.priority,
        started_by: None,
        rerun_of,
    };
    create_run(client, namespace, spec, &base, doing).await
}

/// Creates a run with `spec`, named `<base>-<random>`, as the client's user, who is
/// recorded as its starter (the run-identity policy refuses any other name). Returns the
/// new run's name.
async fn create_run(
    client: Client,
    namespace: &str,
    mut spec: maestro_api::CompositionRunSpec,
    base: &str,
    doing: &str,
) -> Result<String, ApiError> {
    spec.started_by = Some(ask_who(&client).await?.username);
    let mut new = CompositionRun::new("", spec);
    new.metadata.name = None;
    new.metadata.generate_name = Some(format!("{base}-"));
    let runs: Api<CompositionRun> = Api::namespaced(client, namespace);
    let created = runs
        .create(&PostParams::default(), &new)
        .await
        .map_err(|error| ApiError::kube(error, doing))?;
    Ok(created.name_any())
}

/// What the Run form sends: the values of the composition's params.
#[derive(Deserialize, Default)]
pub struct RunRequest {
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// Runs a composition with the Run form's params, as the request's user (`kubectl
/// maestro run`). A param it does not declare, or a required one left out, is refused
/// here; the operator checks enum and pattern and says so in the run's status.
pub async fn run_composition(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Json(request): Json<RunRequest>,
) -> Answer {
    let client = app.access.client_to_act(&headers)?;
    let compositions: Api<Composition> = Api::namespaced(client.clone(), &namespace);
    let composition = compositions
        .get_opt(&name)
        .await
        .map_err(|error| ApiError::kube(error, &format!("reading composition {name:?}")))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("composition {name:?} not found in namespace {namespace:?}"),
            )
        })?;
    let params = params_for(&name, &composition.spec.params, request.params)
        .map_err(ApiError::bad_request)?;
    let spec = maestro_api::CompositionRunSpec {
        composition: name.clone(),
        params,
        cancel: false,
        priority: 0,
        started_by: None,
        rerun_of: None,
    };
    let started = create_run(
        client,
        &namespace,
        spec,
        &name,
        "creating the compositionrun",
    )
    .await?;
    Ok(Json(json!({
        "run": started,
        "message": format!("{started} started"),
    })))
}

/// The form's values as a run's params: empty fields left to their default (or refused
/// when the param has none), undeclared names refused.
fn params_for(
    composition: &str,
    declared: &[ParamSpec],
    given: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    if let Some(unknown) = given
        .keys()
        .find(|key| !declared.iter().any(|param| &param.name == *key))
    {
        return Err(format!(
            "composition {composition:?} has no parameter {unknown:?}"
        ));
    }
    let params: BTreeMap<String, String> = given
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
    let missing: Vec<&str> = declared
        .iter()
        .filter(|param| param.default.is_none() && !params.contains_key(&param.name))
        .map(|param| param.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "composition {composition:?} requires {}",
            missing.join(", ")
        ));
    }
    Ok(params)
}

/// What a rerun request may say: the step to rerun from (default: the steps that did
/// not succeed, and those after them).
#[derive(Deserialize, Default)]
pub struct RerunRequest {
    #[serde(default)]
    pub from: Option<String>,
}

/// Reruns an ended run as the request's user (`kubectl maestro rerun`): a new run that
/// names its source by UID, keeps its params, and reruns its failed steps (or `from` and
/// what follows it). The operator checks the rest and says so in the new run's status.
pub async fn rerun(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Json(request): Json<RerunRequest>,
) -> Answer {
    let client = app.access.client_to_act(&headers)?;
    let run = get_run(client.clone(), &namespace, &name).await?;
    let status = run.status.clone().unwrap_or_default();
    if !status.phase.is_finished() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{name} is {}: rerun it once it has ended",
                wire_name(&status.phase)
            ),
        ));
    }
    let steps = snapshot_of(&run).map(|spec| spec.steps).unwrap_or_default();
    if let Some(from) = &request.from
        && !steps.iter().any(|step| &step.name == from)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{name} has no step {from:?}"),
        ));
    }
    let uid = run
        .uid()
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, format!("{name} has no uid")))?;
    let of = maestro_api::RerunOf {
        run: name.clone(),
        uid,
        from: request.from.clone(),
    };
    let started = start_like(client, &namespace, &run, Some(of), "creating the rerun").await?;
    let what = match &request.from {
        Some(from) => format!("from step {from}"),
        None => "its steps that did not succeed".to_string(),
    };
    Ok(Json(json!({
        "run": started,
        "message": format!("{started} reruns {name} ({what})"),
    })))
}

/// The composition snapshot the run follows.
fn snapshot_of(run: &CompositionRun) -> Option<CompositionSpec> {
    let snapshot = run.status.as_ref()?.composition_spec.clone()?;
    serde_json::from_value(snapshot).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_forms_values_become_params_and_required_ones_are_checked() {
        let declared = vec![
            ParamSpec {
                name: "version".into(),
                default: None,
                description: None,
                allowed: Vec::new(),
                pattern: None,
            },
            ParamSpec {
                name: "env".into(),
                default: Some("staging".into()),
                description: None,
                allowed: vec!["staging".into(), "prod".into()],
                pattern: None,
            },
        ];
        let form = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            params_for("ship", &declared, form(&[("version", "1.2"), ("env", "")])),
            Ok(form(&[("version", "1.2")]))
        );
        let error = params_for("ship", &declared, form(&[("env", "prod")])).unwrap_err();
        assert_eq!(error, "composition \"ship\" requires version");
        let error = params_for(
            "ship",
            &declared,
            form(&[("version", "1"), ("verison", "2")]),
        )
        .unwrap_err();
        assert!(error.contains("no parameter \"verison\""), "{error}");
    }
}
