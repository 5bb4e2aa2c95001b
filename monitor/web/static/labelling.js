// Keyboard labelling for the flagged queue and the sample page; no library.
// Queue: j/k move, i = ID, o = OOD, u = undo the last label given on this page,
// Enter opens the sample; j past the last tile opens the next page (or, when only unlabelled
// samples are shown, reloads this one: the labelled ones are gone and the next take their place).
// Sample page: i/o/u press the matching button.
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var canLabel = document.body.dataset.canLabel === "true";

  function typing(event) {
    var t = event.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }

  // --- sample page: shortcuts press the visible buttons ------------------------------------
  var detailForm = document.querySelector("form.label-form");
  if (detailForm) {
    document.addEventListener("keydown", function (event) {
      if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
      var button = { i: "#label-id", o: "#label-ood", u: "#label-undo" }[event.key];
      var target = button && document.querySelector(button);
      if (target) { event.preventDefault(); target.click(); }
    });
    return;
  }

  // --- queue page ----------------------------------------------------------------------------
  var grid = document.querySelector(".grid");
  var tiles = Array.prototype.slice.call(document.querySelectorAll(".tile"));
  var status = document.getElementById("status");
  if (!tiles.length) return;
  var current = 0;
  var undoStack = []; // sample ids labelled on this page, newest last

  function say(text, isError) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("error", !!isError);
  }

  function select(index) {
    current = Math.max(0, Math.min(tiles.length - 1, index));
    tiles.forEach(function (tile, i) {
      tile.classList.toggle("selected", i === current);
      tile.setAttribute("aria-selected", i === current ? "true" : "false");
    });
    tiles[current].scrollIntoView({ block: "nearest" });
  }

  function show(tile, label) {
    var badge = tile.querySelector(".badge");
    tile.classList.remove("labelled-id", "labelled-ood");
    tile.dataset.label = label || "";
    if (!label) { if (badge) badge.remove(); return; }
    if (!badge) { badge = document.createElement("span"); tile.appendChild(badge); }
    badge.className = "badge " + label.toLowerCase();
    badge.textContent = label;
    tile.classList.add(label === "OOD" ? "labelled-ood" : "labelled-id");
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, "Accept": "application/json" },
      body: JSON.stringify(body || {})
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) throw new Error(data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : response.statusText);
        return data;
      });
    });
  }

  function label(value) {
    var tile = tiles[current];
    var id = tile.dataset.sampleId;
    say("Labelling " + tile.dataset.sampleKey + " as " + value + "…");
    post("/api/samples/" + id + "/labels", { label: value }).then(function (data) {
      show(tile, data.current_label);
      undoStack.push(tile);
      say(tile.dataset.sampleKey + " labelled " + value + " (u to undo)");
      if (current < tiles.length - 1) select(current + 1);
    }).catch(function (error) { say("Could not label: " + error.message, true); });
  }

  function undo() {
    var tile = undoStack.pop();
    if (!tile) { say("Nothing to undo on this page"); return; }
    post("/api/samples/" + tile.dataset.sampleId + "/labels/undo").then(function (data) {
      show(tile, data.current_label);
      select(tiles.indexOf(tile));
      say("Undone: " + tile.dataset.sampleKey + " is now " + (data.current_label || "unlabelled"));
    }).catch(function (error) { undoStack.push(tile); say("Could not undo: " + error.message, true); });
  }

  tiles.forEach(function (tile, i) {
    tile.addEventListener("focus", function () { select(i); });
  });

  document.addEventListener("keydown", function (event) {
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    switch (event.key) {
      case "j": case "ArrowRight":
        if (current === tiles.length - 1 && grid && grid.dataset.continueUrl) {
          window.location.href = grid.dataset.continueUrl;  // next page, or this one refilled
        } else {
          select(current + 1);
        }
        break;
      case "k": case "ArrowLeft": select(current - 1); break;
      case "Enter": window.location.href = tiles[current].getAttribute("href"); break;
      case "i": if (!canLabel) return; label("ID"); break;
      case "o": if (!canLabel) return; label("OOD"); break;
      case "u": if (!canLabel) return; undo(); break;
      default: return;
    }
    event.preventDefault();
  });

  select(0);
})();
