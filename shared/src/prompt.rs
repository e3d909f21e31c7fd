//! Class names per dataset format, the catalogue of procedural edit operations, and the prompt
//! that asks an LLM for anomaly concepts.
//!
//! The prompt lives here, not in the worker, because the coordinator exports DPO preference
//! pairs whose `prompt` must be byte-identical to the text the worker sent.

use serde::{Deserialize, Serialize};

use crate::config::{DatasetFormat, KnowledgeSettings};

/// Whether an edit changes a small region (local) or the whole object's shape or appearance
/// (global).
///
/// One-class Fashion-MNIST probes by the kka team moved Deep SAD AUROC by −5 to +1 points
/// against Deep SVDD with local edits and by +2 to +2.5 points with global edits. Semantic
/// datasets therefore default to the global family and defect or texture datasets to the local
/// family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationFamily {
    Local,
    Global,
}

impl OperationFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationFamily::Local => "local",
            OperationFamily::Global => "global",
        }
    }
}

impl std::fmt::Display for OperationFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One numeric parameter of an operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub min: f64,
    pub max: f64,
    /// Value used when a recipe omits the parameter.
    pub default: f64,
    pub doc: &'static str,
}

/// One edit operation of the procedural generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OperationSpec {
    pub name: &'static str,
    pub family: OperationFamily,
    /// Description of the edit and of what severity scales, shown in the LLM prompt.
    pub doc: &'static str,
    pub params: &'static [ParamSpec],
}

impl OperationSpec {
    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.params.iter().find(|param| param.name == name)
    }
}

const fn param(name: &'static str, min: f64, max: f64, default: f64, doc: &'static str) -> ParamSpec {
    ParamSpec { name, min, max, default, doc }
}

const AREA: ParamSpec = param("area", 0.01, 0.6, 0.15, "share of the image area covered at severity 1");
const ASPECT: ParamSpec = param("aspect", 0.2, 5.0, 1.0, "width divided by height of the region");
const CENTER_X: ParamSpec = param("center_x", -1.0, 1.0, -1.0, "horizontal centre in [0, 1] from the left; -1 places it at random");
const CENTER_Y: ParamSpec = param("center_y", -1.0, 1.0, -1.0, "vertical centre in [0, 1] from the top; -1 places it at random");
const DIRECTION: ParamSpec = param("direction", -1.0, 1.0, 0.0, "+1 or -1 picks the direction; 0 picks one at random");
const AXIS: ParamSpec = param("axis", 0.0, 1.0, 0.0, "0 = horizontal (left-right), 1 = vertical (top-bottom)");

/// Every operation the procedural generator implements, in a fixed order. The index in this
/// list is the operation's position in the TorchScript condition vector, so append only.
pub const OPERATIONS: &[OperationSpec] = &[
    OperationSpec {
        name: "erase",
        family: OperationFamily::Local,
        doc: "fills a rectangle with a constant intensity; severity scales the rectangle's area",
        params: &[AREA, ASPECT, CENTER_X, CENTER_Y, param("value", 0.0, 1.0, 0.0, "fill intensity in [0, 1]")],
    },
    OperationSpec {
        name: "cutpaste",
        family: OperationFamily::Local,
        doc: "pastes a patch cut from another normal image at a random place; severity scales the patch area",
        params: &[param("area", 0.01, 0.6, 0.1, "share of the image area covered at severity 1"), ASPECT],
    },
    OperationSpec {
        name: "perlin",
        family: OperationFamily::Local,
        doc: "blends a noise texture into the image inside a Perlin-noise mask; severity scales coverage and opacity",
        params: &[
            param("frequency", 1.0, 8.0, 3.0, "noise cells across the image"),
            param("opacity", 0.0, 1.0, 0.9, "texture opacity at severity 1"),
        ],
    },
    OperationSpec {
        name: "warp",
        family: OperationFamily::Local,
        doc: "bulges or pinches and shears a round region; severity scales the displacement",
        params: &[
            param("radius", 0.1, 0.5, 0.25, "radius of the region as a share of the image side"),
            param("bulge", -1.0, 1.0, 1.0, "+1 magnifies the region, -1 shrinks it"),
            param("shear", -1.0, 1.0, 0.5, "sideways shift of the region relative to its radius"),
            CENTER_X,
            CENTER_Y,
        ],
    },
    OperationSpec {
        name: "intensity",
        family: OperationFamily::Local,
        doc: "shifts brightness and contrast inside a soft region; severity scales both changes",
        params: &[
            param("area", 0.01, 0.6, 0.2, "share of the image area covered"),
            param("shift", -1.0, 1.0, 0.0, "brightness change at severity 1; 0 picks +-0.6 at random"),
            param("contrast", 0.0, 1.0, 0.5, "share of local contrast removed at severity 1"),
            CENTER_X,
            CENTER_Y,
        ],
    },
    OperationSpec {
        name: "blur",
        family: OperationFamily::Local,
        doc: "blurs a soft region; severity blends from sharp to fully blurred",
        params: &[
            param("area", 0.01, 1.0, 0.3, "share of the image area covered"),
            param("sigma", 0.5, 3.0, 1.5, "Gaussian standard deviation in pixels at severity 1"),
            CENTER_X,
            CENTER_Y,
        ],
    },
    OperationSpec {
        name: "noise",
        family: OperationFamily::Local,
        doc: "adds Gaussian noise inside a soft region; severity scales the noise's standard deviation",
        params: &[
            param("area", 0.01, 1.0, 0.3, "share of the image area covered"),
            param("sigma", 0.0, 1.0, 0.4, "noise standard deviation at severity 1, in intensity units"),
            CENTER_X,
            CENTER_Y,
        ],
    },
    OperationSpec {
        name: "strokes",
        family: OperationFamily::Local,
        doc: "draws straight strokes; severity scales their length and opacity",
        params: &[
            param("count", 1.0, 4.0, 2.0, "number of strokes"),
            param("width", 0.02, 0.2, 0.07, "stroke width as a share of the image side"),
            param("value", 0.0, 1.0, 1.0, "stroke intensity in [0, 1]"),
        ],
    },
    OperationSpec {
        name: "blobs",
        family: OperationFamily::Local,
        doc: "paints filled round blobs; severity scales their radius and opacity",
        params: &[
            param("count", 1.0, 4.0, 2.0, "number of blobs"),
            param("radius", 0.03, 0.3, 0.12, "blob radius as a share of the image side at severity 1"),
            param("value", 0.0, 1.0, 1.0, "blob intensity in [0, 1]"),
        ],
    },
    OperationSpec {
        name: "rotate",
        family: OperationFamily::Global,
        doc: "rotates the whole image about its centre; severity scales the angle",
        params: &[param("max_degrees", 5.0, 180.0, 120.0, "angle at severity 1, in degrees"), DIRECTION],
    },
    OperationSpec {
        name: "flip",
        family: OperationFamily::Global,
        doc: "mirrors a central band of the image; severity scales the band from nothing to the whole image",
        params: &[AXIS],
    },
    OperationSpec {
        name: "squeeze",
        family: OperationFamily::Global,
        doc: "squeezes or stretches the whole image along one axis; severity scales the factor",
        params: &[
            AXIS,
            param("direction", -1.0, 1.0, 0.0, "-1 squeezes, +1 stretches, 0 picks at random"),
            param("max_factor", 0.1, 0.7, 0.5, "relative size change at severity 1"),
        ],
    },
    OperationSpec {
        name: "thickness",
        family: OperationFamily::Global,
        doc: "thickens (dilation) or thins (erosion) strokes and silhouettes; severity scales the radius",
        params: &[
            param("direction", -1.0, 1.0, 0.0, "+1 thickens, -1 thins, 0 picks at random"),
            param("radius", 1.0, 3.0, 2.0, "morphological radius in pixels at severity 1"),
        ],
    },
    OperationSpec {
        name: "stripes",
        family: OperationFamily::Global,
        doc: "paints a stripe or check pattern inside the object's silhouette; severity scales the pattern's contrast",
        params: &[
            param("period", 0.08, 0.5, 0.2, "pattern period as a share of the image side"),
            param("angle", -1.0, 180.0, -1.0, "stripe angle in degrees; -1 picks one at random"),
            param("checks", 0.0, 1.0, 0.0, "0 paints stripes, 1 paints checks"),
        ],
    },
    OperationSpec {
        name: "part_swap",
        family: OperationFamily::Global,
        doc: "joins one part of the image to the other part of another normal image; severity scales the misalignment",
        params: &[AXIS, param("cut", 0.2, 0.8, 0.5, "position of the cut as a share of the image side")],
    },
    OperationSpec {
        name: "fill_gaps",
        family: OperationFamily::Global,
        doc: "closes gaps and holes in the object (dilation then erosion); severity scales the radius",
        params: &[param("radius", 1.0, 4.0, 2.0, "morphological radius in pixels at severity 1")],
    },
];

/// The operation with this name, if the procedural generator implements it.
pub fn operation(name: &str) -> Option<&'static OperationSpec> {
    OPERATIONS.iter().find(|spec| spec.name == name)
}

/// Position of an operation in [`OPERATIONS`].
pub fn operation_index(name: &str) -> Option<usize> {
    OPERATIONS.iter().position(|spec| spec.name == name)
}

/// Largest number of parameters any operation has.
pub fn max_params() -> usize {
    OPERATIONS.iter().map(|spec| spec.params.len()).max().unwrap_or(0)
}

const FASHION_MNIST: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

const CIFAR10: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

const CIFAR100: [&str; 100] = [
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn mower", "leopard", "lion", "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
];

/// Human-readable class names of a dataset format, indexed by label. `Folder` datasets name
/// their classes by folder, so the list is empty and the data loader supplies the names.
pub fn class_names(format: DatasetFormat) -> Vec<String> {
    let names: Vec<String> = match format {
        DatasetFormat::FashionMnist => FASHION_MNIST.iter().map(|name| name.to_string()).collect(),
        DatasetFormat::Mnist => (0..10).map(|digit| format!("digit {digit}")).collect(),
        DatasetFormat::Cifar10 => CIFAR10.iter().map(|name| name.to_string()).collect(),
        DatasetFormat::Cifar100 => CIFAR100.iter().map(|name| name.to_string()).collect(),
        DatasetFormat::Folder => Vec::new(),
    };
    names
}

/// Names of the normal classes: `configured` (`knowledge.class_names`) when it is non-empty,
/// else `dataset` (the dataset's names, such as [`class_names`]), indexed by label. A label
/// without a name becomes "class K".
pub fn normal_class_names(configured: &[String], dataset: &[String], normal_classes: &[u32]) -> Vec<String> {
    let names = if configured.is_empty() { dataset } else { configured };
    normal_classes
        .iter()
        .map(|&label| names.get(label as usize).cloned().unwrap_or_else(|| format!("class {label}")))
        .collect()
}

/// Build the prompt a worker sends for a knowledge config: [`anomaly_prompt`] with the normal
/// class names joined by " or " and `knowledge.captions`. The coordinator calls this too, so
/// exported DPO prompts match the worker's text.
pub fn knowledge_prompt(
    knowledge: &KnowledgeSettings,
    normal_class_names: &[String],
    hard_examples: &[String],
    easy_examples: &[String],
) -> String {
    anomaly_prompt(&normal_class_names.join(" or "), &knowledge.captions, hard_examples, easy_examples)
}

/// Maximum number of captions, hard examples and easy examples each that go into a prompt.
pub const MAX_PROMPT_ITEMS: usize = 12;

/// Maximum characters kept of one caption or example. The rest is cut off.
pub const MAX_ITEM_CHARS: usize = 200;

/// Build the user message that asks an LLM for anomaly concepts of one normal class.
///
/// `captions` describe normal samples, `hard_examples` are anomaly descriptions the detector
/// found hard in the previous round (to propose more like them) and `easy_examples` those it
/// found easy (to avoid). Each list keeps its first [`MAX_PROMPT_ITEMS`] entries. Each entry is
/// put on one line and cut to [`MAX_ITEM_CHARS`] characters, so the prompt stays bounded. The
/// text is deterministic: the same arguments give the same bytes.
pub fn anomaly_prompt(class_name: &str, captions: &[String], hard_examples: &[String], easy_examples: &[String]) -> String {
    let class_name = one_line(class_name);
    let mut prompt = format!(
        "We train a one-class anomaly detector on images of the class \"{class_name}\". \
         Describe anomalies: images that still resemble a {class_name} but differ from every normal \
         {class_name} in a way a careful inspector would notice.\n"
    );

    push_list(&mut prompt, "Captions of normal images:", captions);
    push_list(
        &mut prompt,
        "In the previous round the detector found these anomalies hard to tell from normal images. Propose more concepts like them:",
        hard_examples,
    );
    push_list(
        &mut prompt,
        "The detector found these anomalies easy. Avoid concepts like them:",
        easy_examples,
    );

    prompt.push_str("\nEach concept must be realised by exactly one of these image edit operations:\n");
    for spec in OPERATIONS {
        push_operation(&mut prompt, spec);
    }

    prompt.push_str(
        "\nReply with JSON only, no prose, in this form:\n\
         {\"concepts\": [{\"description\": \"<one sentence about the anomalous image>\", \
         \"operation\": \"<operation name>\", \"params\": {\"<parameter>\": <number>}}]}\n\
         Use only the operations and parameters listed, with values inside their ranges. \
         Omitted parameters take their defaults. Give each concept a different description.\n",
    );
    prompt
}

fn push_list(prompt: &mut String, heading: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    prompt.push('\n');
    prompt.push_str(heading);
    prompt.push('\n');
    for item in items.iter().take(MAX_PROMPT_ITEMS) {
        prompt.push_str("- ");
        prompt.push_str(&one_line(item));
        prompt.push('\n');
    }
}

fn push_operation(prompt: &mut String, spec: &OperationSpec) {
    prompt.push_str(&format!("- {} ({}): {}.", spec.name, spec.family, spec.doc));
    if !spec.params.is_empty() {
        let params: Vec<String> = spec
            .params
            .iter()
            .map(|param| format!("{} in [{}, {}], default {}: {}", param.name, param.min, param.max, param.default, param.doc))
            .collect();
        prompt.push_str(" Parameters: ");
        prompt.push_str(&params.join("; "));
        prompt.push('.');
    }
    prompt.push('\n');
}

/// Collapse runs of whitespace, newlines included, and cut the text to [`MAX_ITEM_CHARS`] characters.
fn one_line(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(MAX_ITEM_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn class_names_match_label_counts() {
        assert_eq!(class_names(DatasetFormat::FashionMnist).len(), 10);
        assert_eq!(class_names(DatasetFormat::FashionMnist)[1], "Trouser");
        assert_eq!(class_names(DatasetFormat::Mnist)[7], "digit 7");
        assert_eq!(class_names(DatasetFormat::Cifar10)[3], "cat");
        assert_eq!(class_names(DatasetFormat::Cifar100).len(), 100);
        assert_eq!(class_names(DatasetFormat::Cifar100)[99], "worm");
        assert!(class_names(DatasetFormat::Folder).is_empty());
    }

    #[test]
    fn operation_names_are_unique() {
        let mut names: Vec<&str> = OPERATIONS.iter().map(|spec| spec.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPERATIONS.len());
    }

    #[test]
    fn param_defaults_lie_in_their_ranges() {
        for spec in OPERATIONS {
            for param in spec.params {
                assert!(param.min <= param.default, "{}.{}", spec.name, param.name);
                assert!(param.default <= param.max, "{}.{}", spec.name, param.name);
            }
        }
    }

    #[test]
    fn prompt_contains_class_examples_and_operations() {
        let prompt = anomaly_prompt(
            "Trouser",
            &strings(&["plain dark trousers"]),
            &strings(&["a trouser with a slightly wider leg"]),
            &strings(&["a trouser covered in noise"]),
        );
        assert!(prompt.contains("\"Trouser\""), "{prompt}");
        assert!(prompt.contains("- plain dark trousers\n"), "{prompt}");
        assert!(prompt.contains("Propose more concepts like them:\n- a trouser with a slightly wider leg\n"), "{prompt}");
        assert!(prompt.contains("Avoid concepts like them:\n- a trouser covered in noise\n"), "{prompt}");
        for spec in OPERATIONS {
            assert!(prompt.contains(&format!("- {} (", spec.name)), "{} missing", spec.name);
        }
    }

    #[test]
    fn prompt_is_deterministic_and_skips_empty_lists() {
        let first = anomaly_prompt("Bag", &[], &[], &[]);
        assert_eq!(first, anomaly_prompt("Bag", &[], &[], &[]));
        assert!(!first.contains("previous round"), "{first}");
        assert!(!first.contains("Captions"), "{first}");
    }

    #[test]
    fn normal_class_names_prefer_configured() {
        let dataset = strings(&["a", "b"]);
        assert_eq!(normal_class_names(&[], &dataset, &[1, 5]), strings(&["b", "class 5"]));
        assert_eq!(normal_class_names(&strings(&["x"]), &dataset, &[0]), strings(&["x"]));
    }

    #[test]
    fn knowledge_prompt_uses_captions_and_joined_names() {
        let mut config = crate::config::Config::from_toml("").unwrap().into_raw();
        config.knowledge.captions = strings(&["a plain grey coat"]);
        let prompt = knowledge_prompt(&config.knowledge, &strings(&["Coat", "Shirt"]), &[], &[]);
        assert!(prompt.contains("\"Coat or Shirt\""), "{prompt}");
        assert!(prompt.contains("- a plain grey coat\n"), "{prompt}");
    }

    #[test]
    fn prompt_flattens_and_bounds_items() {
        let long = "x".repeat(MAX_ITEM_CHARS + 50);
        let many: Vec<String> = (0..MAX_PROMPT_ITEMS + 5).map(|i| format!("hard {i}")).collect();
        let prompt = anomaly_prompt("Coat\nwith newline", &[long], &many, &[]);
        assert!(prompt.contains("\"Coat with newline\""), "{prompt}");
        assert!(prompt.contains(&format!("- {}\n", "x".repeat(MAX_ITEM_CHARS))));
        assert!(!prompt.contains(&"x".repeat(MAX_ITEM_CHARS + 1)));
        assert!(prompt.contains(&format!("hard {}", MAX_PROMPT_ITEMS - 1)));
        assert!(!prompt.contains(&format!("hard {}", MAX_PROMPT_ITEMS)));
    }
}
