//! Who the caller is, as the API server authenticates them (`kubectl auth whoami`): the
//! name a run's `startedBy` and an Approval's `approvedBy` must carry, and the groups an
//! Approval may record. Admission policies refuse any other, so asking is the only way
//! to get them right; a name from the command line would only be refused.

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::lookup::api_error;

/// The caller, as the API server sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub username: String,
    pub groups: Vec<String>,
}

/// Asks the API server who the caller is (a SelfSubjectReview). With kubectl's `--as`
/// and `--as-group`, that is the impersonated user and groups.
pub async fn whoami(client: &Client) -> anyhow::Result<Caller> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|error| api_error(error, "asking the API server who you are"))?;
    let user = review.status.and_then(|status| status.user_info);
    let username = user
        .as_ref()
        .and_then(|user| user.username.clone())
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("the API server did not say who you are (empty SelfSubjectReview)")
        })?;
    let groups = user.and_then(|user| user.groups).unwrap_or_default();
    Ok(Caller { username, groups })
}
