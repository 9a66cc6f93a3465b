// In-Context Matting: frontend behaviour of the pack's nodes (plain ES module, no build step, nothing fetched).
//  - A freshly added node's seed starts "fixed": the reference context is encoded once and ComfyUI's cache keeps
//    it while only the targets change. Loaded workflows keep whatever they saved.
//  - Save Reference Context shows the file it wrote, and Load Reference Context's list is refreshed to include it.
import { app } from "../../scripts/app.js";

const PACK_PREFIX = "ICM_";
const SAVE_CONTEXT = "ICM_SaveReferenceContext";
const SAVED_KEY = "icm_saved_context";

function isOurs(node) {
  return (node.comfyClass ?? node.type ?? "").startsWith(PACK_PREFIX);
}

function showSavedFile(node, names) {
  const text = `saved: ${names.join(", ")}`;
  let widget = node.widgets?.find((w) => w.name === SAVED_KEY);
  if (!widget) {
    widget = node.addWidget("text", SAVED_KEY, text, () => {}, { serialize: false });
    widget.label = "saved";
    widget.disabled = true;
  }
  widget.value = text;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "InContextMatting.Nodes",

  nodeCreated(node) {
    if (!isOurs(node)) return;
    for (const widget of node.widgets ?? []) {
      if (widget.name === "control_after_generate") widget.value = "fixed";
    }
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== SAVE_CONTEXT) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const names = output?.[SAVED_KEY];
      if (!names?.length) return;
      showSavedFile(this, names);
      app.refreshComboInNodes();
    };
  },
});
