use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reusable step type: what a step of a Composition runs. A Task declares its inputs
/// and outputs (what `kubectl explain` and UIs show), the agent capabilities it needs,
/// and how it runs: a built-in of `maestro-agent`, or any container image (a plugin in any
/// language, started under `maestro-agent exec`). Steps find a Task in their own
/// namespace first, then in the operator's library namespace (the standard library).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "maestro.dev",
    version = "v1alpha1",
    kind = "Task",
    namespaced,
    shortname = "mtask",
    category = "maestro",
    printcolumn(name = "Runs", type_ = "string", json_path = ".spec.builtin", description = "Built-in task of maestro-agent"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.container.image", description = "Plugin image"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("has(self.spec.builtin) != has(self.spec.container)").message("a Task runs either a builtin or a container, exactly one of spec.builtin and spec.container"),
)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// What the task does, in one or two sentences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// The inputs a step gives this task in its `with` map.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(i, self.exists_one(j, j.name == i.name))").message("input names must be unique"))]
    #[schemars(length(max = 64))]
    pub inputs: Vec<TaskInput>,

    /// The outputs the task reports; later steps read them as `steps.<step>.outputs.<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(o, self.exists_one(j, j.name == o.name))").message("output names must be unique"))]
    #[schemars(length(max = 64))]
    pub outputs: Vec<TaskOutput>,

    /// Agent capabilities the task needs (like `maven` or `aws`); a run goes only to an
    /// Agent whose capabilities cover every task in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,

    /// Secrets, by name, whose keys become environment variables of every step that runs
    /// this Task (an EC2 task's cloud credentials, say). Only the Task's steps get them:
    /// a step never sees a Secret its Task does not declare or the step does not name.
    /// Whoever writes the Task must be allowed to read each (an admission policy checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub secret_env: Vec<String>,

    /// A task built into `maestro-agent`, run in the agent image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinTask>,

    /// A plugin: any image and command, run under `maestro-agent exec`. The command
    /// reads its inputs from `MAESTRO_INPUT_<NAME>` environment variables (and all of
    /// them as JSON in `MAESTRO_INPUTS`) and writes each output to a file named after it
    /// in the directory `$MAESTRO_OUTPUTS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<TaskContainer>,
}

/// A built-in task of `maestro-agent`; the operator and the agent share its names.
pub use maestro_protocol::BuiltinTask;

/// One input of a task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskInput {
    /// The input's name, the key of a step's `with` map.
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z][a-zA-Z0-9_]*$')").message("input names start with a letter and hold letters, digits and _"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The input's type; values are checked against it before the step's pod starts.
    #[serde(default, rename = "type")]
    pub type_: ValueType,
    /// Whether a step must set this input (a required input has no default).
    #[serde(default)]
    pub required: bool,
    /// The value used when the step does not set it; may be a template like
    /// `{{ steps.provision.outputs.publicIp }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::any_json")]
    pub default: Option<serde_json::Value>,
    /// What the input means, shown to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The input is code the task runs (a script, a shell command line). A step may not
    /// put a `{{ }}` template in it: a param or an output is data, never code, and spliced
    /// into a script it would run as code. Pass such values through environment variables
    /// instead (the shell task's `env`) and read them as `$NAME`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub code: bool,
}

/// One output of a task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskOutput {
    /// The output's name, read by later steps as `steps.<step>.outputs.<name>`.
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z][a-zA-Z0-9_]*$')").message("output names start with a letter and hold letters, digits and _"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The output's type.
    #[serde(default, rename = "type")]
    pub type_: ValueType,
    /// What the output means, shown to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The type of an input or output value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ValueType {
    /// Text.
    #[default]
    String,
    /// A number.
    Number,
    /// true or false.
    Boolean,
    /// A list of values.
    Array,
    /// A map of keys to values.
    Object,
}

/// How a plugin task runs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskContainer {
    /// The plugin's image. Local images need `imagePullPolicy: IfNotPresent` or `Never`.
    #[x_kube(validation = Rule::new("self != ''").message("image must not be empty"))]
    #[schemars(length(max = 512))]
    pub image: String,
    /// The command and its arguments, run by `maestro-agent exec`.
    #[x_kube(validation = Rule::new("size(self) > 0").message("command must name a program"))]
    #[schemars(length(max = 256))]
    pub command: Vec<String>,
    /// Image pull policy of the step pod: Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
}
