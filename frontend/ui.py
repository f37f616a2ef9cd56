"""`build_ui(client)`: the Gradio page at /ui — projects, uploads, volume list, and the embedded viewer.

Only wiring: every callback is a handler of frontend/handlers.py turned into Gradio updates.
Painting, Retrain, review and downloads happen on the dedicated viewer page (frontend/static/viewer.html)
embedded here, because Gradio's ImageEditor resamples masks and cannot zoom pixel-exactly.
"""

from __future__ import annotations

import gradio as gr

from frontend import handlers, manage, render
from frontend.client import ApiClient

CSS = """
.sw-msg { padding: 8px 12px; border-radius: 6px; margin: 4px 0; font-weight: 500; }
.sw-ok { background: #e3f4e6; color: #0f4d1c; border: 1px solid #3c8c4e; }
.sw-info { background: #e8eef8; color: #14305c; border: 1px solid #4a6fa8; }
.sw-error { background: #fbe4e4; color: #6e0e0e; border: 1px solid #b33a3a; }
.sw-table { border-collapse: collapse; width: 100%; font-size: 14px; }
.sw-table th, .sw-table td { border-bottom: 1px solid #c5c9d0; padding: 4px 8px; text-align: left; }
.sw-table tr.sw-selected { background: #fff4cc; color: #1a1a1a; }
.sw-legend { display: flex; gap: 8px; flex-wrap: wrap; align-items: center; }
.sw-chip { display: inline-flex; align-items: center; gap: 4px; border: 1px solid #8a8f98; border-radius: 12px;
           padding: 1px 8px; }
.sw-swatch { width: 12px; height: 12px; border-radius: 3px; display: inline-block; border: 1px solid #333; }
.sw-viewer-head { display: flex; gap: 16px; align-items: center; margin-bottom: 6px; }
.sw-button-link { font-weight: 600; }
.sw-empty { color: #4a4f57; }
"""

THEME_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


def theme() -> gr.themes.Base:
    """Default look with system fonts only: nothing is fetched from a font CDN (the app runs offline)."""
    return gr.themes.Default(primary_hue="blue", font=THEME_FONTS, font_mono=MONO_FONTS)


def build_ui(client: ApiClient) -> gr.Blocks:
    with gr.Blocks(title="slicewise", analytics_enabled=False) as demo:
        state = gr.State(handlers.empty_state())
        gr.Markdown(
            "# slicewise\nPaint a few slices, press **Retrain**, review the predicted masks, download them.",
            elem_id="title",
        )

        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                gr.Markdown("### 1 · Project")
                project = gr.Dropdown(
                    label="Project",
                    choices=[],
                    value=None,
                    interactive=True,
                    elem_id="project-select",
                    allow_custom_value=False,
                )
                refresh = gr.Button("Refresh project list", elem_id="refresh-projects", size="sm")
                project_message = gr.HTML(elem_id="project-status")
                labels_html = gr.HTML(elem_id="project-labels")
                with gr.Accordion("Create a new project", open=False, elem_id="new-project-panel"):
                    new_name = gr.Textbox(
                        label="Project name", placeholder="e.g. Hippocampus study", elem_id="new-project-name"
                    )
                    new_labels = gr.Textbox(
                        label="Labels: one per line as 'name' or 'name #rrggbb' (0 = background is implicit)",
                        lines=3,
                        value="anterior #e6194b\nposterior #3cb44b",
                        elem_id="new-project-labels",
                    )
                    create = gr.Button("Create project", variant="primary", elem_id="create-project")
                with gr.Accordion("Manage this project", open=False, elem_id="manage-panel"):
                    edit_labels = gr.Textbox(
                        label="Labels: 'value name #rrggbb' per line (rename, recolour, add)",
                        lines=3,
                        elem_id="edit-labels",
                    )
                    save_labels = gr.Button("Save labels", elem_id="save-labels", size="sm")
                    delete_volume_name = gr.Textbox(
                        label="To delete the selected volume, type its name", elem_id="delete-volume-confirm"
                    )
                    delete_volume = gr.Button(
                        "Delete the selected volume", variant="stop", size="sm", elem_id="delete-volume"
                    )
                    delete_project_name = gr.Textbox(
                        label="To delete this project and everything in it, type its name",
                        elem_id="delete-project-confirm",
                    )
                    delete_project = gr.Button(
                        "Delete this project", variant="stop", size="sm", elem_id="delete-project"
                    )

            with gr.Column(scale=1, min_width=280):
                gr.Markdown("### 2 · Upload volumes")
                files = gr.File(
                    label="NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha), or a .zip of one DICOM "
                    "series (or of a .nhdr/.mhd with its data file)",
                    file_count="multiple",
                    type="filepath",
                    elem_id="upload-files",
                )
                upload = gr.Button("Upload to this project", variant="primary", elem_id="upload-button")
                upload_message = gr.HTML(elem_id="upload-status")

            with gr.Column(scale=2, min_width=480):
                gr.Markdown("### 3 · Volumes")
                volume = gr.Dropdown(
                    label="Volume to open in the viewer below",
                    choices=[],
                    value=None,
                    interactive=True,
                    elem_id="volume-select",
                )
                volumes_html = gr.HTML(render.volumes_table([]), elem_id="volume-table")
                with gr.Accordion("Import a mask made elsewhere onto this volume", open=False, elem_id="mask-panel"):
                    mask_file = gr.File(
                        label="NIfTI, NRRD, Slicer .seg.nrrd, MetaImage or DICOM-SEG (.dcm); slices "
                        "along the third axis with a label become painted slices",
                        type="filepath",
                        elem_id="mask-file",
                    )
                    mask_import = gr.Button("Import as painted slices", elem_id="mask-import")
                    mask_message = gr.HTML(elem_id="mask-status")

        gr.Markdown("### 4 · Paint, retrain, review, download")
        viewer_html = gr.HTML(render.viewer_frame(None), elem_id="viewer")

        outputs = [
            state,
            project,
            project_message,
            labels_html,
            volume,
            volumes_html,
            upload_message,
            viewer_html,
            files,
        ]

        def show(screen: handlers.Screen) -> list:
            def upd(value, **kw):
                return gr.update() if value is None else gr.update(value=value, **kw)

            project_update = (
                gr.update()
                if screen.project_choices is None
                else gr.update(choices=screen.project_choices, value=screen.project_value)
            )
            if screen.project_choices is None and screen.project_value is not None:
                project_update = gr.update(value=screen.project_value)
            volume_update = (
                gr.update()
                if screen.volume_choices is None
                else gr.update(choices=screen.volume_choices, value=screen.volume_value)
            )
            return [
                screen.state,
                project_update,
                upd(screen.project_message),
                upd(screen.labels_html),
                volume_update,
                upd(screen.volumes_html),
                upd(screen.upload_message),
                upd(screen.viewer_html),
                gr.update(value=None) if screen.clear_upload else gr.update(),
            ]

        def caller(request: gr.Request | None):
            # the API call acts for the browser's user: forward their login cookie (no-op without users)
            headers = getattr(request, "headers", None) or {}
            return client.as_caller(cookie=headers.get("cookie"))

        def on_load(st, request: gr.Request):
            return show(handlers.load_projects(caller(request), st))

        def on_project(st, pid, request: gr.Request):
            if pid == st.get("project_id"):
                return [gr.update() for _ in outputs]  # programmatic change echoes back: nothing to do
            return show(handlers.select_project(caller(request), st, pid))

        def on_create(st, name, labels, request: gr.Request):
            return show(handlers.create_project(caller(request), st, name, labels))

        def on_upload(st, paths, request: gr.Request, progress=gr.Progress()):
            return show(handlers.upload_files(caller(request), st, paths, progress=lambda f, d: progress(f, desc=d)))

        def on_mask(st, path, request: gr.Request):
            screen = handlers.import_mask(caller(request), st, path)
            return screen.extra["mask_message"]

        def on_volume(st, vid, request: gr.Request):
            if vid == st.get("volume_id"):
                return [gr.update() for _ in outputs]
            return show(handlers.select_volume(caller(request), st, vid))

        def on_labels_shown(st, request: gr.Request):
            return manage.project_labels_text(caller(request), st)

        def on_save_labels(st, text, request: gr.Request):
            return show(manage.save_labels(caller(request), st, text))

        def on_delete_volume(st, confirm, request: gr.Request):
            return show(manage.delete_volume(caller(request), st, confirm))

        def on_delete_project(st, confirm, request: gr.Request):
            return show(manage.delete_project(caller(request), st, confirm))

        demo.load(on_load, [state], outputs).then(on_labels_shown, [state], [edit_labels])
        save_labels.click(on_save_labels, [state, edit_labels], outputs).then(on_labels_shown, [state], [edit_labels])
        delete_volume.click(on_delete_volume, [state, delete_volume_name], outputs).then(
            lambda: "", None, [delete_volume_name]
        )
        delete_project.click(on_delete_project, [state, delete_project_name], outputs).then(
            lambda: "", None, [delete_project_name]
        ).then(on_labels_shown, [state], [edit_labels])
        refresh.click(on_load, [state], outputs)
        project.change(on_project, [state, project], outputs).then(on_labels_shown, [state], [edit_labels])
        create.click(on_create, [state, new_name, new_labels], outputs).then(on_labels_shown, [state], [edit_labels])
        upload.click(on_upload, [state, files], outputs)
        volume.change(on_volume, [state, volume], outputs)
        mask_import.click(on_mask, [state, mask_file], [mask_message])
    return demo
