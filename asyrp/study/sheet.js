(function () {
  "use strict";
  // Study metadata written by asyrp.study (no method names: which side is which lives in the answer key).
  var meta = JSON.parse(document.getElementById("study-meta").textContent);
  var storeKey = "asyrp-study:" + meta.study_id;
  var participant = document.getElementById("participant");
  var statusBox = document.getElementById("status");
  var progress = document.getElementById("progress");
  var exportText = document.getElementById("export-text");
  var total = 0;
  meta.sets.forEach(function (s) { total += s.questions.length; });

  function radios() { return document.querySelectorAll("input[type=radio][data-set]"); }

  function answers() {
    var out = {};
    radios().forEach(function (r) {
      if (r.checked) { out[r.getAttribute("data-set") + "/" + r.getAttribute("data-question")] = r.value; }
    });
    return out;
  }

  function missing(a) {
    var gaps = [];
    meta.sets.forEach(function (s, i) {
      s.questions.forEach(function (q) {
        if (!a[s.set + "/" + q]) { gaps.push("set " + (i + 1) + " (" + q + ")"); }
      });
    });
    return gaps;
  }

  function save() {
    try {
      window.localStorage.setItem(storeKey, JSON.stringify({ participant: participant.value, answers: answers() }));
    } catch (e) { /* storage unavailable: answers stay in the page only */ }
  }

  function restore() {
    var saved = null;
    try { saved = JSON.parse(window.localStorage.getItem(storeKey) || "null"); } catch (e) { saved = null; }
    if (!saved || typeof saved !== "object") { return; }
    if (typeof saved.participant === "string") { participant.value = saved.participant; }
    var a = saved.answers || {};
    radios().forEach(function (r) {
      var k = r.getAttribute("data-set") + "/" + r.getAttribute("data-question");
      if (a[k] === r.value) { r.checked = true; }
    });
  }

  function update() {
    var n = Object.keys(answers()).length;
    progress.textContent = n + " of " + total + " questions answered";
    save();
  }

  function record() {
    var a = answers();
    var gaps = missing(a);
    var who = participant.value.trim();
    if (!who) { return { error: "Please enter your participant ID at the top of the page." }; }
    if (gaps.length) {
      return { error: "Please answer every question first. Unanswered: " + gaps.slice(0, 8).join(", ") +
        (gaps.length > 8 ? " and " + (gaps.length - 8) + " more." : ".") };
    }
    var list = [];
    meta.sets.forEach(function (s) {
      s.questions.forEach(function (q) { list.push({ set: s.set, question: q, answer: a[s.set + "/" + q] }); });
    });
    return {
      format: "asyrp-study-response", version: 1, study_id: meta.study_id, participant: who,
      submitted_at: new Date().toISOString(), answers: list
    };
  }

  function csvCell(v) { return "\"" + String(v).replace(/"/g, "\"\"") + "\""; }

  function toCsv(r) {
    var cols = ["format", "version", "study_id", "participant", "submitted_at", "set", "question", "answer"];
    var lines = [cols.join(",")];
    r.answers.forEach(function (x) {
      lines.push([r.format, r.version, r.study_id, r.participant, r.submitted_at, x.set, x.question, x.answer]
        .map(csvCell).join(","));
    });
    return lines.join("\r\n") + "\r\n";
  }

  function download(text, name, mime) {
    var url = URL.createObjectURL(new Blob([text], { type: mime }));
    var a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
  }

  function exportAs(kind) {
    var r = record();
    if (r.error) {
      statusBox.textContent = r.error;
      statusBox.className = "error";
      return;
    }
    var text = kind === "csv" ? toCsv(r) : JSON.stringify(r, null, 2) + "\n";
    var safe = r.participant.replace(/[^A-Za-z0-9_-]+/g, "_").slice(0, 40) || "participant";
    var name = "response-" + meta.study_id + "-" + safe + "." + kind;
    exportText.value = text;
    download(text, name, kind === "csv" ? "text/csv" : "application/json");
    statusBox.textContent = "Saved " + name + " (check your downloads folder). If no file appeared, copy the " +
      "text below into a file with that name. Send the file to the study organiser.";
    statusBox.className = "ok";
    document.body.setAttribute("data-exported", kind);
  }

  document.addEventListener("change", update);
  participant.addEventListener("input", save);
  document.getElementById("export-json").addEventListener("click", function () { exportAs("json"); });
  document.getElementById("export-csv").addEventListener("click", function () { exportAs("csv"); });
  document.getElementById("clear").addEventListener("click", function () {
    if (!window.confirm("Clear every answer on this page?")) { return; }
    radios().forEach(function (r) { r.checked = false; });
    participant.value = "";
    exportText.value = "";
    statusBox.textContent = "";
    update();
  });
  restore();
  update();
  document.body.setAttribute("data-ready", "1");
})();
