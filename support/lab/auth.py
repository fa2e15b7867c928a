"""Paste filter for the lab's Glance: a project-scoped admin for every request.

Sets the headers keystonemiddleware's ``auth_token`` would set for a valid
token, so that glance's normal ``context`` filter builds an authenticated,
project-scoped admin context (image create and the import API need a project).
Any ``X-Auth-Token`` the client sends (e.g. ``lab-token``) is accepted as is.
A request with ``X-Lab-Project: <id>`` runs as that project instead (a test's "foreign" image,
owned by another project). Plain WSGI, stdlib only.
"""

HEADERS = {
    "HTTP_X_IDENTITY_STATUS": "Confirmed",
    "HTTP_X_ROLES": "admin,member,reader",
}
OTHER_PROJECT = "HTTP_X_LAB_PROJECT"  # X-Lab-Project: the request runs as this project


def filter_factory(global_conf, project_id="lab-project", user_id="lab-admin", **_):
    headers = dict(HEADERS, HTTP_X_PROJECT_ID=project_id, HTTP_X_TENANT_ID=project_id,
                   HTTP_X_USER_ID=user_id)

    def make_filter(app):
        def labauth(environ, start_response):
            environ.update(headers)
            if environ.get(OTHER_PROJECT):
                environ.update(HTTP_X_PROJECT_ID=environ[OTHER_PROJECT], HTTP_X_TENANT_ID=environ[OTHER_PROJECT])
            return app(environ, start_response)
        return labauth

    return make_filter
