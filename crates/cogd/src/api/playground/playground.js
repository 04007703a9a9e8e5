// The playground: builds a form from the model's OpenAPI schema and runs
// predictions through the public HTTP API only (PUT /predictions/{id} as an
// event stream when the model streams, else with `Prefer: respond-async` and
// polling; POST .../cancel; /health-check). Plain JavaScript, no dependencies.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "cogd.playground.token"; // sessionStorage: this tab only
  const HISTORY_KEY = "cogd.playground.history"; // localStorage
  const HISTORY_MAX = 20;
  const KEEP_OUTPUT_CHARS = 256 * 1024; // larger outputs are not kept in history
  const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
  const RUNNABLE = new Set(["READY", "BUSY", "UNHEALTHY"]);

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let doc = null; // the OpenAPI document
  let fields = []; // one per input: {name, schema, control}
  let outputSchema = {};
  let streams = false; // the model is @streaming: runs go as event streams
  let base = "/predictions";
  let health = "";
  let loading = false;
  let run = null; // the prediction under way: {id, cancelled}
  let blobs = []; // object URLs of the output shown, revoked when it is replaced

  /** Makes an element: props are properties, or attributes when they hold a dash. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.includes("-")) node.setAttribute(key, value === true ? "" : value);
      else node[key] = value;
    }
    node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // -- the HTTP API ----------------------------------------------------------------

  class Unauthorized extends Error {}

  /** fetch with the token, if one was given; a 401 asks for (another) token. */
  async function api(path, init = {}) {
    const headers = new Headers(init.headers || {});
    if (token) headers.set("Authorization", "Bearer " + token);
    const response = await fetch(path, { ...init, headers });
    if (response.status === 401) {
      askToken(token ? "That token was refused." : "");
      throw new Unauthorized();
    }
    return response;
  }

  async function jsonOf(response) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }

  // -- token -------------------------------------------------------------------------

  function askToken(message) {
    $("token-form").hidden = false;
    $("run-form").hidden = true;
    $("token-error").textContent = message;
    $("token").focus();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-form").hidden = true;
    loadSchema();
  });

  // -- health ------------------------------------------------------------------------

  async function pollHealth() {
    let body = null;
    try {
      body = await jsonOf(await fetch("/health-check", { cache: "no-store" }));
    } catch {
      body = null;
    }
    showHealth(body);
    const wait = health === "READY" || health === "BUSY" ? 2000 : 500;
    setTimeout(pollHealth, wait);
  }

  const HEALTH_TEXT = {
    STARTING: "Setting up…",
    READY: "Ready",
    BUSY: "Busy: every slot is running",
    SETUP_FAILED: "Setup failed",
    DEFUNCT: "The model's worker stopped for good",
    UNHEALTHY: "Unhealthy",
    OFFLINE: "The server does not answer",
  };

  function showHealth(body) {
    health = (body && body.status) || "OFFLINE";
    const setup = (body && body.setup) || {};
    document.body.dataset.health = health;
    $("health").dataset.health = health;
    let text = HEALTH_TEXT[health] || health;
    if (health === "UNHEALTHY" && body.user_healthcheck_error) {
      text += ": " + body.user_healthcheck_error;
    }
    $("health-text").textContent = text;
    const inSetup = health === "STARTING" || health === "SETUP_FAILED";
    $("setup").hidden = !inSetup;
    if (inSetup) {
      const last = (setup.logs || "").trimEnd().split("\n").pop();
      $("setup-reason").textContent =
        health === "SETUP_FAILED"
          ? `Setup failed${last ? ": " + last : ""}. The model cannot run; its setup logs:`
          : "The model is setting up. Its logs so far:";
      setText($("setup-logs"), setup.logs || "");
    }
    $("run").disabled = !RUNNABLE.has(health) || run !== null;
    if (!$("run-form").hidden) markUsable();
    if (RUNNABLE.has(health) && !doc && !loading && $("token-form").hidden) loadSchema();
  }

  /** Replaces a log box's text, keeping it scrolled to the end if it was. */
  function setText(box, text) {
    if (box.textContent === text) return;
    const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    box.textContent = text;
    if (atEnd) box.scrollTop = box.scrollHeight;
  }

  // -- schema ------------------------------------------------------------------------

  async function loadSchema() {
    loading = true;
    try {
      // The discovery document lists `trainings_url` only on a server that
      // runs the training function: its form is the training's.
      const [response, routes] = await Promise.all([
        api("/openapi.json"),
        api("/", { headers: { Accept: "application/json" } }),
      ]);
      if (!response.ok) return; // not ready yet: health polling retries
      base = ((await jsonOf(routes)) || {}).trainings_url ? "/trainings" : "/predictions";
      doc = await response.json();
      buildForm();
    } catch (error) {
      if (!(error instanceof Unauthorized)) $("form-error").textContent = String(error);
    } finally {
      loading = false;
    }
  }

  /** A schema with its `$ref`s and single-part `allOf` resolved; keys given beside them win. */
  function deref(schema) {
    if (!schema || typeof schema !== "object") return {};
    if (schema.$ref) {
      const name = schema.$ref.split("/").pop();
      const { $ref, ...rest } = schema;
      return { ...deref(((doc.components || {}).schemas || {})[name]), ...rest };
    }
    if (Array.isArray(schema.allOf)) {
      const { allOf, ...rest } = schema;
      const merged = Object.assign({}, ...allOf.map(deref), rest);
      // Cog's choices are an enum component named after the input, with a
      // boilerplate description: neither is the input's own.
      if (!rest.description) delete merged.description;
      if (!rest.title) delete merged.title;
      return merged;
    }
    return schema;
  }

  /** The input and output schemas of the route runs go to, and whether it streams. */
  function readDocument() {
    const post = ((doc.paths || {})[base] || {}).post || {};
    streams = post["x-cog-streaming"] === true;
    const schemas = (doc.components || {}).schemas || {};
    const body = ((post.requestBody || {}).content || {})["application/json"] || {};
    const request = deref(body.schema);
    const fallback = base === "/trainings" ? "Training" : "";
    const input = deref((request.properties || {}).input || schemas[fallback + "Input"]);
    const reply = (((post.responses || {})["200"] || {}).content || {})["application/json"] || {};
    const response = deref(reply.schema);
    outputSchema = deref((response.properties || {}).output || schemas[fallback + "Output"]);
    return input;
  }

  function buildForm() {
    const input = readDocument();
    const required = new Set(input.required || []);
    const props = Object.entries(input.properties || {}).map(([name, schema]) => [name, deref(schema)]);
    props.sort(([, a], [, b]) => (a["x-order"] ?? 1e9) - (b["x-order"] ?? 1e9));
    fields = props.map(([name, schema]) => ({
      name,
      schema,
      control: field(name, schema, required.has(name)),
    }));
    const box = $("fields");
    box.replaceChildren(...fields.map((f) => f.control.node));
    if (!fields.length) box.append(el("p", { className: "hint" }, "This model takes no input."));
    const title = (doc.info && doc.info.title) || "";
    $("model-title").textContent = title === "Cog" ? "" : title; // "Cog" names no model
    $("run-form").hidden = false;
    $("result").hidden = false;
    $("run").disabled = !RUNNABLE.has(health) || run !== null;
    markUsable();
  }

  /** Notes when the form first became usable (built, and the model ready), in
   * milliseconds since the page was asked for: `<html data-ready>`. */
  function markUsable() {
    const root = document.documentElement;
    if (fields && doc && !$("run").disabled && !root.dataset.ready) root.dataset.ready = Math.round(performance.now());
  }

  // -- controls ----------------------------------------------------------------------

  /** A value the user gave that cannot be sent; shown at its field. */
  class FieldError extends Error {
    constructor(name, message) {
      super(message);
      this.field = name;
    }
  }

  function kindOf(schema) {
    if (Array.isArray(schema.enum)) return "select";
    if (schema.type === "boolean") return "checkbox";
    if (schema.type === "integer" || schema.type === "number") return "number";
    if (schema.type === "string" && schema.format === "uri") return "file";
    if (schema.type === "string" && (schema["x-cog-secret"] || schema.format === "password")) return "secret";
    if (schema.type === "string") return schema.maxLength <= 120 || schema.pattern ? "text" : "textarea";
    if (schema.type === "array") return "list";
    return "json";
  }

  /** What the schema says about the value, for the hint under the label. */
  function hintOf(schema, kind) {
    const parts = [];
    const s = kind === "list" ? deref(schema.items) : schema;
    if (kind === "list") parts.push("list of " + (s.format === "uri" ? "files" : s.type || "values"));
    else if (kind === "json") parts.push("JSON" + (allowsString(schema) ? " or text" : ""));
    else if (kind === "number") parts.push(schema.type);
    if (s.minimum !== undefined) parts.push("≥ " + s.minimum);
    if (s.maximum !== undefined) parts.push("≤ " + s.maximum);
    if (s.minLength !== undefined) parts.push("at least " + s.minLength + " characters");
    if (s.maxLength !== undefined) parts.push("at most " + s.maxLength + " characters");
    if (s.pattern) parts.push("matching " + s.pattern);
    if (schema["x-cog-accept"]) parts.push("accepts " + schema["x-cog-accept"]);
    return parts.join(", ");
  }

  /** `num_outputs` -> `Num Outputs`, as Cog titles inputs. */
  function titleOf(name) {
    return name.replace(/_/g, " ").replace(/\b\w/g, (c) => c.toUpperCase());
  }

  function allowsString(schema) {
    if (Array.isArray(schema.anyOf)) return schema.anyOf.some((s) => deref(s).type === "string");
    return !schema.type;
  }

  /** One input's field: label, marks, control, description and error place. */
  function field(name, schema, required) {
    const kind = kindOf(schema);
    const id = "in-" + name;
    const described = ["desc-" + name, "err-" + name].join(" ");
    const control = makeControl(kind, id, schema, name, required, described);
    const marks = [
      required ? el("span", { className: "req", title: "required", "aria-hidden": "true" }, "*") : null,
      schema.deprecated ? el("span", { className: "badge" }, "deprecated") : null,
    ];
    const title = schema.title || titleOf(name);
    const label =
      kind === "checkbox"
        ? el("label", { className: "check", htmlFor: id }, control.widget, title, ...marks)
        : kind === "list"
          ? el("span", { className: "label", id: id + "-label" }, title, ...marks)
          : el("label", { htmlFor: id }, title, ...marks);
    const hint = hintOf(schema, kind);
    const desc = [schema.description, hint && "(" + hint + ")"].filter(Boolean).join(" ");
    control.node = el(
      "div",
      { className: "field" + (schema.deprecated ? " deprecated" : ""), id: "field-" + name, "data-kind": kind },
      label,
      kind === "checkbox" ? null : control.widget,
      el("p", { className: "desc", id: "desc-" + name }, desc),
      el("p", { className: "error", id: "err-" + name, role: "alert" }),
    );
    if ("default" in schema) control.set(schema.default);
    return control;
  }

  function makeControl(kind, id, schema, name, required, described) {
    const common = { id, "aria-describedby": described, "aria-required": required ? "true" : undefined };
    switch (kind) {
      case "checkbox":
        return checkboxControl(common);
      case "select":
        return selectControl(common, schema, required);
      case "number":
        return numberControl(common, schema, name);
      case "file":
        return fileControl(common, schema, name);
      case "list":
        return listControl(common, schema, name);
      case "json":
        return jsonControl(common, schema, name);
      default:
        return textControl(common, schema, kind);
    }
  }

  // Each control: widget (its element), get() -> value to send (undefined: leave
  // it out, so the model's default applies) and set(value).

  function textControl(common, schema, kind) {
    const widget =
      kind === "textarea"
        ? el("textarea", { ...common, rows: 2 })
        : el("input", {
            ...common,
            type: kind === "secret" ? "password" : "text",
            autocomplete: kind === "secret" ? "off" : undefined,
          });
    return {
      widget,
      get: () => (widget.value === "" && !("default" in schema) ? undefined : widget.value),
      set: (value) => (widget.value = value ?? ""),
    };
  }

  function checkboxControl(common) {
    const widget = el("input", { ...common, type: "checkbox" });
    return { widget, get: () => widget.checked, set: (value) => (widget.checked = !!value) };
  }

  function selectControl(common, schema, required) {
    const choices = schema.enum;
    const blank = !required && !("default" in schema);
    const widget = el(
      "select",
      common,
      blank ? el("option", { value: "" }, "(none)") : null,
      ...choices.map((choice, i) => el("option", { value: String(i) }, String(choice))),
    );
    return {
      widget,
      get: () => (widget.value === "" ? undefined : choices[Number(widget.value)]),
      set: (value) => {
        const i = choices.findIndex((c) => c === value);
        widget.value = i < 0 ? "" : String(i);
      },
    };
  }

  function numberControl(common, schema, name) {
    const widget = el("input", {
      ...common,
      type: "number",
      inputMode: schema.type === "integer" ? "numeric" : "decimal",
      step: schema.type === "integer" ? "1" : "any",
      min: schema.minimum,
      max: schema.maximum,
    });
    return {
      widget,
      get: () => {
        if (widget.validity.badInput) throw new FieldError(name, "Not a number.");
        return widget.value === "" ? undefined : Number(widget.value);
      },
      set: (value) => (widget.value = value ?? ""),
    };
  }

  /** A file from disk (sent as a data URI) or a URL. */
  function fileControl(common, schema, name) {
    const picker = el("input", { ...common, type: "file", accept: schema["x-cog-accept"] });
    const url = el("input", {
      type: "url",
      id: common.id + "-url",
      placeholder: "or a URL (https://…, data:…)",
      "aria-label": (schema.title || name) + " URL",
      "aria-describedby": common["aria-describedby"],
    });
    const clear = el("button", { type: "button", hidden: true }, "Clear file");
    clear.addEventListener("click", () => {
      picker.value = "";
      clear.hidden = true;
    });
    picker.addEventListener("change", () => (clear.hidden = !picker.files.length));
    const widget = el("div", { className: "file" }, el("div", { className: "file-row" }, picker, clear), url);
    return {
      widget,
      get: async () => {
        if (picker.files.length) return await dataUri(picker.files[0]);
        return url.value.trim() === "" ? undefined : url.value.trim();
      },
      set: (value) => {
        picker.value = "";
        clear.hidden = true;
        url.value = typeof value === "string" ? value : "";
      },
    };
  }

  function dataUri(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        // An unknown type reads as "data:;base64,"; the server wants one.
        resolve(String(reader.result).replace(/^data:;/, "data:application/octet-stream;"));
      };
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  /** A list of values of the item type, with a row per value. */
  function listControl(common, schema, name) {
    const item = deref(schema.items);
    const itemKind = kindOf(item);
    const rows = el("div", { className: "list", id: common.id, role: "group", "aria-labelledby": common.id + "-label", "aria-describedby": common["aria-describedby"] });
    const controls = [];
    const add = (value) => {
      const n = controls.length;
      const kind = itemKind === "list" ? "json" : itemKind === "textarea" ? "text" : itemKind;
      const control = makeControl(kind, `${common.id}-${n}`, item, name, false, undefined);
      control.widget.setAttribute("aria-label", `${schema.title || titleOf(name)}, item ${n + 1}`);
      if (value !== undefined) control.set(value);
      const remove = el("button", { type: "button", "aria-label": `Remove item ${n + 1}` }, "Remove");
      const row = el("div", { className: "list-row" }, control.widget, remove);
      remove.addEventListener("click", () => {
        controls.splice(controls.indexOf(control), 1);
        row.remove();
      });
      controls.push(control);
      rows.append(row);
    };
    const addButton = el("button", { type: "button" }, "Add item");
    addButton.addEventListener("click", () => {
      add(undefined);
      rows.lastChild.querySelector("input, select, textarea").focus();
    });
    const widget = el("div", {}, rows, addButton);
    return {
      widget,
      get: async () => {
        const values = [];
        for (const control of controls) {
          const value = await control.get();
          if (value !== undefined) values.push(value);
        }
        return values.length || "default" in schema ? values : undefined;
      },
      set: (values) => {
        controls.length = 0;
        rows.replaceChildren();
        for (const value of Array.isArray(values) ? values : []) add(value);
      },
    };
  }

  /** Any other value as JSON text (text that is not JSON is sent as a string where one fits). */
  function jsonControl(common, schema, name) {
    const widget = el("textarea", { ...common, rows: 2, className: "json" });
    widget.spellcheck = false;
    return {
      widget,
      get: () => {
        const text = widget.value.trim();
        if (text === "") return undefined;
        try {
          return JSON.parse(text);
        } catch {
          if (allowsString(schema)) return widget.value;
          throw new FieldError(name, "Not valid JSON.");
        }
      },
      set: (value) => (widget.value = value === undefined ? "" : JSON.stringify(value)),
    };
  }

  // -- running -----------------------------------------------------------------------

  async function collectInput() {
    const input = {};
    for (const f of fields) {
      const value = await f.control.get();
      if (value !== undefined) input[f.name] = value;
    }
    return input;
  }

  function newId() {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    return "pg-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  $("run-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!$("run").disabled) start();
  });
  $("run-form").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("run-form").requestSubmit();
    }
  });
  $("reset").addEventListener("click", () => {
    clearErrors();
    for (const f of fields) f.control.set(f.schema.default);
  });
  $("cancel").addEventListener("click", async () => {
    if (!run) return;
    run.cancelled = true;
    $("cancel").disabled = true;
    showStatus("Cancelling…");
    try {
      await api(`${base}/${encodeURIComponent(run.id)}/cancel`, { method: "POST" });
    } catch (error) {
      if (!(error instanceof Unauthorized)) $("run-error").textContent = String(error);
    }
  });

  async function start() {
    clearErrors();
    let input;
    try {
      input = await collectInput();
    } catch (error) {
      if (error instanceof FieldError) return showFieldErrors([{ field: error.field, msg: error.message }]);
      return void ($("form-error").textContent = String(error));
    }
    run = { id: newId(), cancelled: false, began: performance.now() };
    $("run").disabled = true;
    $("cancel").disabled = false;
    const view = new View(input);
    try {
      let final = streams ? await viaStream(run.id, input, view) : undefined;
      if (final === undefined) {
        run.id = newId(); // after a 406 the first id stays unused
        final = await viaPolling(run.id, input, view);
      }
      view.end();
      if (final) finish(final, view);
      else showStatus("Not run");
    } catch (error) {
      view.end();
      if (!(error instanceof Unauthorized)) $("run-error").textContent = String(error);
      showStatus("Error");
    } finally {
      run = null;
      $("cancel").disabled = true;
      $("run").disabled = !RUNNABLE.has(health);
    }
  }

  /** PUT with `Accept: text/event-stream`; the final prediction, null when the
   * stream broke off (then polling finds the end), or undefined on 406. */
  async function viaStream(id, input, view) {
    const response = await api(`${base}/${encodeURIComponent(id)}`, {
      method: "PUT",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ input }),
    });
    if (response.status === 406) {
      streams = false;
      return undefined;
    }
    if (!response.ok) {
      await refused(response);
      return null;
    }
    let final = null;
    await readEvents(response.body, (name, data) => {
      const value = JSON.parse(data);
      if (name === "start") view.update(value);
      else if (name === "output") view.chunk(value.index, value.chunk);
      else if (name === "log") view.log(value.data);
      else if (name === "metric") view.metric(value);
      else if (name === "completed") final = value;
      else if (name === "error") $("run-error").textContent = value.detail || data;
    });
    return final || (await pollUntilDone(id, view));
  }

  /** Reads server-sent events from a body stream, calling onEvent(name, data). */
  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          const colon = line.indexOf(":");
          const key = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (key === "event") name = val;
          else if (key === "data") data.push(val);
        }
        if (data.length) onEvent(name, data.join("\n"));
      }
    }
  }

  /** PUT with `Prefer: respond-async` (202 at once), then poll until it ends. */
  async function viaPolling(id, input, view) {
    const response = await api(`${base}/${encodeURIComponent(id)}`, {
      method: "PUT",
      headers: { "Content-Type": "application/json", Prefer: "respond-async" },
      body: JSON.stringify({ input }),
    });
    if (!response.ok) {
      await refused(response);
      return null;
    }
    const prediction = await response.json();
    view.update(prediction);
    return TERMINAL.has(prediction.status) ? prediction : await pollUntilDone(id, view);
  }

  async function pollUntilDone(id, view) {
    let wait = 100;
    for (;;) {
      await sleep(wait);
      wait = Math.min(wait * 1.25, 1000);
      const response = await api(`${base}/${encodeURIComponent(id)}`);
      if (!response.ok) {
        await refused(response);
        return null;
      }
      const prediction = await response.json();
      if (TERMINAL.has(prediction.status)) return prediction;
      view.update(prediction);
    }
  }

  /** An answer other than 2xx: 422 entries go to their fields, the rest above the output. */
  async function refused(response) {
    const body = (await jsonOf(response)) || {};
    if (response.status === 422 && Array.isArray(body.detail)) {
      const problems = body.detail.map((d) => {
        const loc = Array.isArray(d.loc) ? d.loc : [];
        const at = loc[0] === "body" && loc[1] === "input" ? loc[2] : undefined;
        return { field: fields.some((f) => f.name === at) ? at : undefined, msg: d.msg || JSON.stringify(d) };
      });
      return showFieldErrors(problems);
    }
    const message = typeof body.detail === "string" ? body.detail : body.error || response.statusText;
    $("run-error").textContent = `${response.status}: ${message}`;
  }

  function showFieldErrors(problems) {
    let first = null;
    for (const { field: name, msg } of problems) {
      const box = name === undefined ? null : $("err-" + name);
      if (!box) {
        $("form-error").textContent += (($("form-error").textContent && " ") || "") + msg;
        continue;
      }
      box.textContent += (box.textContent ? " " : "") + msg;
      const widget = $("in-" + name);
      if (widget) widget.setAttribute("aria-invalid", "true");
      first = first || widget;
    }
    if (first) first.focus();
  }

  function clearErrors() {
    for (const box of document.querySelectorAll(".error")) box.textContent = "";
    for (const widget of document.querySelectorAll("[aria-invalid]")) widget.removeAttribute("aria-invalid");
  }

  function showStatus(text) {
    $("status").textContent = text;
  }

  // -- showing a prediction -------------------------------------------------------

  /** The output pane for one run: status, logs, outputs (streamed or polled), metrics. */
  class View {
    constructor(input) {
      this.input = input;
      this.chunks = [];
      this.next = 0; // the index of the next chunk that extends the text in order
      this.logs = "";
      this.metrics = {};
      this.shown = "";
      this.status = "starting";
      document.body.dataset.status = "starting";
      resetOutput();
      setText($("logs"), "");
      $("metrics").replaceChildren();
      this.timer = setInterval(() => this.tick(), 100);
      this.tick();
    }
    tick() {
      const seconds = run ? (performance.now() - run.began) / 1000 : 0;
      showStatus(`${run && run.cancelled ? "Cancelling" : this.status}… ${seconds.toFixed(1)} s`);
    }
    update(prediction) {
      this.status = prediction.status || this.status;
      document.body.dataset.status = this.status;
      if (typeof prediction.logs === "string") setText($("logs"), (this.logs = prediction.logs));
      if (prediction.output !== undefined && prediction.output !== null) this.output(prediction.output);
      if (prediction.metrics) showMetrics(prediction.metrics);
    }
    /** A polled output: shown again only when it changed. */
    output(value) {
      const text = JSON.stringify(value);
      if (text === this.shown) return;
      this.shown = text;
      if (Array.isArray(value) && outputSchema["x-cog-array-type"] === "iterator") {
        value.forEach((chunk, i) => this.chunk(i, chunk));
        return;
      }
      resetOutput();
      $("output").append(render(value, outputSchema));
    }
    /** One streamed chunk: text is appended where it goes, anything else rendered in place. */
    chunk(index, chunk) {
      if (this.chunks[index] !== undefined) return;
      this.chunks[index] = chunk;
      if (typeof chunk === "string" && !isFile(chunk, deref(outputSchema.items))) {
        const joiner = concatenates(outputSchema) ? "" : "\n";
        let pre = $("output").querySelector("pre.stream");
        if (!pre) $("output").append((pre = el("pre", { className: "text stream" })));
        if (index === this.next) {
          pre.append((index && pre.textContent ? joiner : "") + chunk);
        } else {
          pre.textContent = this.chunks.filter((c) => typeof c === "string").join(joiner);
        }
        while (this.chunks[this.next] !== undefined) this.next++;
      } else {
        $("output").append(render(chunk, deref(outputSchema.items)));
      }
    }
    log(text) {
      this.logs += text;
      setText($("logs"), this.logs);
    }
    metric(record) {
      const { name, value, mode } = record;
      const old = this.metrics[name];
      if (mode === "incr") this.metrics[name] = (old || 0) + value;
      else if (mode === "append") this.metrics[name] = [...(Array.isArray(old) ? old : []), value];
      else if (value === null) delete this.metrics[name];
      else this.metrics[name] = value;
      showMetrics(this.metrics);
    }
    end() {
      clearInterval(this.timer);
      this.tick = () => {};
    }
  }

  /** Seconds as people read them: milliseconds below one second. */
  function duration(seconds) {
    return seconds < 1 ? (seconds * 1000).toFixed(1) + " ms" : seconds.toFixed(2) + " s";
  }

  function concatenates(schema) {
    return schema["x-cog-array-display"] === "concatenate";
  }

  function finish(prediction, view) {
    view.end();
    view.update(prediction);
    const seconds = prediction.metrics && prediction.metrics.predict_time;
    showStatus(prediction.status + (typeof seconds === "number" ? ` in ${duration(seconds)}` : ""));
    if (prediction.error) $("run-error").textContent = prediction.error;
    remember(prediction, view.input);
  }

  /** A finished (or stored) prediction shown whole. */
  function showPrediction(prediction) {
    resetOutput();
    clearErrors();
    document.body.dataset.status = prediction.status;
    const seconds = prediction.metrics && prediction.metrics.predict_time;
    showStatus(
      `${prediction.status}${typeof seconds === "number" ? ` in ${duration(seconds)}` : ""} · ${prediction.id}`,
    );
    if (prediction.output !== null && prediction.output !== undefined) {
      $("output").append(render(prediction.output, outputSchema));
    } else if (prediction.output_dropped) {
      $("output").append(el("p", { className: "muted" }, "(output too large to keep in the browser)"));
    }
    if (prediction.error) $("run-error").textContent = prediction.error;
    setText($("logs"), prediction.logs || "");
    showMetrics(prediction.metrics || {});
  }

  function showMetrics(metrics) {
    const rows = [];
    const add = (name, value) => {
      if (value && typeof value === "object" && !Array.isArray(value)) {
        for (const [k, v] of Object.entries(value)) add(name + "." + k, v);
      } else {
        const text = name === "predict_time" && typeof value === "number" ? duration(value) : JSON.stringify(value);
        rows.push(el("dt", {}, name), el("dd", {}, text));
      }
    };
    for (const [name, value] of Object.entries(metrics)) add(name, value);
    $("metrics").replaceChildren(...rows);
  }

  function resetOutput() {
    for (const url of blobs) URL.revokeObjectURL(url);
    blobs = [];
    $("output").replaceChildren();
  }

  // -- rendering outputs -----------------------------------------------------------

  function isFile(value, schema) {
    return typeof value === "string" && (value.startsWith("data:") || (schema.format === "uri" && /^https?:\/\//.test(value)));
  }

  /** An output value by its type: files as media or downloads, text, lists, JSON as a tree. */
  function render(value, schema, depth = 0) {
    schema = deref(schema);
    if (value === null || value === undefined) return el("span", { className: "null" }, "null");
    if (isFile(value, schema)) return renderFile(value);
    if (typeof value === "string") return depth ? el("span", { className: "str" }, JSON.stringify(value)) : el("pre", { className: "text" }, value);
    if (Array.isArray(value)) {
      if (concatenates(schema) && value.every((v) => typeof v === "string")) return el("pre", { className: "text" }, value.join(""));
      const item = deref(schema.items);
      if (depth === 0 && value.some((v) => isFile(v, item))) return el("div", {}, ...value.map((v) => render(v, item, 1)));
      return tree(value, item, depth);
    }
    if (typeof value === "object") return tree(value, schema, depth);
    return depth ? el("span", { className: typeof value === "number" ? "num" : "bool" }, String(value)) : el("pre", { className: "text" }, String(value));
  }

  /** A JSON object or list as a tree of collapsible entries; files inside it shown as files. */
  function tree(value, schema, depth) {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v, schema]) : Object.entries(value).map(([k, v]) => [k, v, ((schema.properties || {})[k]) || {}]);
    const items = entries.map(([key, v, s]) => {
      const keyNode = el("span", { className: "key" }, Array.isArray(value) ? `${key}: ` : `${JSON.stringify(key)}: `);
      if (v && typeof v === "object") {
        const size = Array.isArray(v) ? `[${v.length}]` : `{${Object.keys(v).length}}`;
        return el("li", {}, el("details", { open: depth < 2 }, el("summary", {}, keyNode, size), render(v, s, depth + 1)));
      }
      return el("li", {}, keyNode, render(v, s, depth + 1));
    });
    return el("ul", { className: "tree" }, ...items);
  }

  const TYPES = {
    png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", webp: "image/webp", svg: "image/svg+xml",
    wav: "audio/wav", mp3: "audio/mpeg", ogg: "audio/ogg", flac: "audio/flac", mp4: "video/mp4", webm: "video/webm",
    txt: "text/plain", json: "application/json",
  };
  const EXTENSIONS = Object.fromEntries(Object.entries(TYPES).map(([ext, type]) => [type, ext]));

  /** A file output: inline when the browser can show it, and always a download link. */
  function renderFile(url) {
    let type = "";
    let name = "output";
    let href = url;
    if (url.startsWith("data:")) {
      type = url.slice(5, url.search(/[;,]/)).toLowerCase();
      href = blobUrl(url, type) || url;
      name += "." + (EXTENSIONS[type] || "bin");
    } else {
      const path = new URL(url, location.href).pathname;
      name = decodeURIComponent(path.split("/").pop() || "output");
      type = TYPES[(name.split(".").pop() || "").toLowerCase()] || "";
    }
    const media = type.startsWith("image/")
      ? el("img", { src: href, alt: "Output image " + name })
      : type.startsWith("audio/")
        ? el("audio", { src: href, controls: true })
        : type.startsWith("video/")
          ? el("video", { src: href, controls: true })
          : null;
    const link = el("a", { href, download: name, rel: "noopener" }, "Download " + name);
    return el("figure", { className: "media" }, media, el("figcaption", {}, link, type ? ` (${type})` : ""));
  }

  /** A data URI as an object URL (so large files download, and are not held twice). */
  function blobUrl(uri, type) {
    const comma = uri.indexOf(",");
    if (comma < 0 || !/;base64$/i.test(uri.slice(0, comma))) return null;
    try {
      const text = atob(uri.slice(comma + 1));
      const bytes = new Uint8Array(text.length);
      for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
      const url = URL.createObjectURL(new Blob([bytes], { type }));
      blobs.push(url);
      return url;
    } catch {
      return null;
    }
  }

  // -- recent predictions (kept in this browser) -----------------------------------

  function storedPredictions() {
    try {
      const list = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
      return Array.isArray(list) ? list : [];
    } catch {
      return [];
    }
  }

  /** Keeps a finished prediction, its file inputs and large outputs left out. */
  function remember(prediction, input) {
    const kept = {
      id: prediction.id,
      status: prediction.status,
      created_at: prediction.created_at,
      input: Object.fromEntries(
        Object.entries(input).map(([k, v]) => [k, typeof v === "string" && v.startsWith("data:") ? "(a file)" : v]),
      ),
      error: prediction.error || null,
      metrics: prediction.metrics || {},
      logs: (prediction.logs || "").slice(-8192),
      output: prediction.output ?? null,
    };
    if (JSON.stringify(kept.output).length > KEEP_OUTPUT_CHARS) {
      kept.output = null;
      kept.output_dropped = true;
    }
    let list = [kept, ...storedPredictions().filter((p) => p.id !== kept.id)].slice(0, HISTORY_MAX);
    while (list.length) {
      try {
        localStorage.setItem(HISTORY_KEY, JSON.stringify(list));
        break;
      } catch {
        list = list.slice(0, -1); // over the browser's quota: drop the oldest
      }
    }
    showHistory();
  }

  function showHistory() {
    const items = storedPredictions().map((p) => {
      const when = p.created_at ? new Date(p.created_at).toLocaleString() : "";
      const show = el("button", { type: "button" }, `${when} · ${p.status} · ${p.id}`);
      show.addEventListener("click", async () => {
        if (run) return;
        let latest = p; // the server's copy, while it still has the prediction
        try {
          const response = await api(`${base}/${encodeURIComponent(p.id)}`);
          if (response.ok) latest = await response.json();
        } catch {
          latest = p;
        }
        showPrediction(latest);
      });
      const reuse = el("button", { type: "button", "aria-label": `Put the input of ${p.id} in the form` }, "Use input");
      reuse.addEventListener("click", () => {
        clearErrors();
        for (const f of fields) if (f.name in p.input && p.input[f.name] !== "(a file)") f.control.set(p.input[f.name]);
        $("run-form").querySelector("input, select, textarea")?.focus();
      });
      return el("li", {}, show, " ", reuse);
    });
    $("history").replaceChildren(...items);
    $("history-box").hidden = items.length === 0;
  }

  $("clear-history").addEventListener("click", () => {
    localStorage.removeItem(HISTORY_KEY);
    showHistory();
  });

  // The two requests first: they are what the form waits for.
  loadSchema();
  pollHealth();
  showHistory();
})();
